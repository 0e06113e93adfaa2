package cache

// Blobs: what the cache knows of each (its size, and the bytes of a small one), answered
// from memory or over the one road of load.go; a blob too large to keep is answered as
// upstream's stream, from the same single upstream GET that found it large.

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/opencontainers/go-digest"

	"regcache/upstream"
)

// BlobInfo is what the cache keeps of a blob: its size, and its verified bytes when it is
// small enough to keep (image configs, which Diun, Renovate and skopeo inspect read).
type BlobInfo struct {
	// Size is the blob's length, -1 when unknown: upstream did not say, or the blob was
	// only seen too large to keep (a GET's length is not trusted as its size: the body
	// was never read whole).
	Size int64
	// Data is nil when the bytes are not held.
	Data []byte
}

// Blob is the cache's answer for a blob: its bytes, its size alone (a HEAD), or a stream.
type Blob struct {
	BlobInfo
	// Stream, when set, is upstream's answer to pass on (status, length, range): a blob too
	// large to keep, verified against its digest as it passes, or the part a Range asked
	// for. The caller closes its Body.
	Stream *upstream.Blob
}

func blobKey(up, repo string, d digest.Digest) string {
	return "b\x00" + up + "\x00" + repo + "\x00" + string(d)
}

// blobNegativeKey keeps a blob's 404 apart from a manifest's with the same digest.
func blobNegativeKey(up, repo string, d digest.Digest) string {
	return negativeKey(up, repo, "blob\x00"+string(d))
}

// BlobRequest is what a client asks of a blob.
type BlobRequest struct {
	// Body is false for a HEAD: the size is enough, and one upstream HEAD finds it.
	Body bool
	// Range is the client's Range header. A blob small enough to keep is fetched whole
	// and answered whole (RFC 9110 allows it); a larger one streams the part asked for.
	Range string
	// NoStream asks for a small blob's bytes only: a blob too large to keep is answered
	// with neither bytes nor a stream (the digest API reads image configs, never streams).
	NoStream bool
}

// Blob answers a blob request. A small blob comes from memory or from one coalesced
// upstream GET, verified against d and kept; a larger one streams from that same GET
// (a Range's part from a GET of its own), and is known as large after, so that later GETs
// open their stream at once.
func (c *Cache) Blob(ctx context.Context, o *Origin, repo string, d digest.Digest, req BlobRequest) (Blob, Status, error) {
	up := o.Registry.Name()
	repo, d = strings.Clone(repo), digest.Digest(strings.Clone(string(d))) // may alias request buffers
	key := blobKey(up, repo, d)
	if info, ok := c.blobInfo(key); ok {
		switch {
		case info.Data != nil, !req.Body && info.Size >= 0:
			return Blob{BlobInfo: info}, Hit, nil
		case req.Body && (info.Size > c.cfg.MaxBlobSize || info.Size < 0):
			// Known too large to keep: straight to its stream.
			if req.NoStream {
				return Blob{BlobInfo: BlobInfo{Size: -1}}, Hit, nil
			}
			s, err := c.streamBlob(o, repo, d, req.Range)
			return Blob{BlobInfo: BlobInfo{Size: -1}, Stream: s}, Miss, err
		}
	}
	l := &blobLookup{content{c: c, o: o, up: up, repo: repo, d: d, wantBody: req.Body, mkey: key}}
	f, err := load(ctx, &c.blobFlights, c.fleet, 0, l)
	if err != nil {
		return Blob{}, Miss, err
	}
	b := Blob{BlobInfo: f.info}
	if f.stream != nil {
		// The GET that found the blob large is handed to one of the requests that shared
		// it; one that wants a part, or no stream, closes it, and the others open their own.
		s := f.stream.take()
		if s != nil && (req.Range != "" || req.NoStream) {
			_ = s.Body.Close()
			s = nil
		}
		if s == nil && !req.NoStream {
			if s, err = c.streamBlob(o, repo, d, req.Range); err != nil {
				return Blob{}, Miss, err
			}
		}
		b.Stream = s
	}
	return b, Miss, nil
}

// streamBlob opens a blob's stream, verified as it passes when it is the whole blob. It
// outlives the request's handler (fasthttp writes it after), so it is bound to no request
// context: closing its Body ends it.
func (c *Cache) streamBlob(o *Origin, repo string, d digest.Digest, rangeHeader string) (*upstream.Blob, error) {
	_, s, err := o.Registry.GetBlob(context.Background(), repo, d, rangeHeader, -1)
	return s, err
}

func (c *Cache) blobInfo(key string) (BlobInfo, bool) {
	if v, ok := c.store.rc.Get(key); ok {
		if e, ok := v.(*blobEntry); ok {
			return e.BlobInfo, true
		}
	}
	return BlobInfo{}, false
}

// blobFetch is what one blob flight found: the blob's info and, for a blob too large to
// keep, its open stream.
type blobFetch struct {
	info   BlobInfo
	stream *handoff
}

// handoff passes an open stream to exactly one of the requests that shared its flight.
// One that no request takes (they all went away) ends by itself: its idle timer cancels
// the upstream request after the upstream timeout.
type handoff struct {
	taken atomic.Bool
	b     *upstream.Blob
}

func (h *handoff) take() *upstream.Blob {
	if h.taken.CompareAndSwap(false, true) {
		return h.b
	}
	return nil
}

// blobLookup is a blob's miss, for load. Blobs are not shared through the fleet tier.
type blobLookup struct{ content }

// key: a HEAD and a GET are flights of their own.
func (l *blobLookup) key() string {
	if !l.wantBody {
		return "head\x00" + l.mkey
	}
	return "get\x00" + l.mkey
}

func (l *blobLookup) waits() bool              { return false }
func (l *blobLookup) background() bool         { return false } // only clients ask for blobs
func (l *blobLookup) fleet() (blobFetch, bool) { return blobFetch{}, false }

func (l *blobLookup) memory() (blobFetch, bool, error) {
	if info, ok := l.c.blobInfo(l.mkey); ok && (info.Data != nil || (!l.wantBody && info.Size >= 0)) {
		return blobFetch{info: info}, true, nil
	}
	return blobFetch{}, false, l.c.store.negative(blobNegativeKey(l.up, l.repo, l.d))
}

// fetch asks upstream: a HEAD for the size, or one GET of the whole blob that is kept when
// small and streamed otherwise.
func (l *blobLookup) fetch() (blobFetch, error) {
	if !l.wantBody {
		b, err := l.o.Registry.OpenBlob(context.Background(), http.MethodHead, l.repo, l.d, "")
		if err != nil {
			return blobFetch{}, err
		}
		_ = b.Body.Close()
		return blobFetch{info: BlobInfo{Size: b.Size}}, nil
	}
	data, s, err := l.o.Registry.GetBlob(context.Background(), l.repo, l.d, "", l.c.cfg.MaxBlobSize)
	if err != nil {
		return blobFetch{}, err
	}
	if s != nil {
		return blobFetch{info: BlobInfo{Size: -1}, stream: &handoff{b: s}}, nil
	}
	return blobFetch{info: BlobInfo{Size: int64(len(data)), Data: data}}, nil
}

// store keeps what a blob is, content-addressed, until evicted. A blob that streams is
// remembered as too large to keep (size -1: a HEAD finds its size), so later GETs stream
// straight away.
func (l *blobLookup) store(f blobFetch) blobFetch {
	e := &blobEntry{BlobInfo: f.info, key: l.c.entryKey(l.mkey)}
	l.c.store.set(l.mkey, e, int64(len(e.Data)), 0)
	return f
}

// blobEntry is a blob as memory holds it; key is its memory key, kept only with
// Config.Snapshots (as TagEntry's).
type blobEntry struct {
	BlobInfo
	key string
}

func (l *blobLookup) failed(err error) {
	switch upstream.KindOf(err) {
	case upstream.KindNotFound, upstream.KindDenied:
		if l.c.cfg.NegativeTTL > 0 {
			l.c.store.set(blobNegativeKey(l.up, l.repo, l.d), &negativeEntry{err: err}, 0, l.c.cfg.NegativeTTL)
		}
	}
}
