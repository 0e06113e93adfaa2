package cache

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"

	"regcache/upstream"
)

// BlobInfo is what the cache knows of a blob: its size, and its verified bytes when it is
// small enough to keep (image configs, which Diun, Renovate and skopeo inspect read).
type BlobInfo struct {
	// Size is the blob's length, -1 when upstream did not say.
	Size int64
	// Data is nil when the bytes are not held: the blob is larger than MaxBlobSize (the
	// caller streams it), or only a HEAD has been seen.
	Data []byte
}

func blobKey(up, repo string, d digest.Digest) string {
	return "b\x00" + up + "\x00" + repo + "\x00" + string(d)
}

// blobNegativeKey keeps a blob's 404 apart from a manifest's with the same digest.
func blobNegativeKey(up, repo string, d digest.Digest) string {
	return negativeKey(up, repo, "blob\x00"+string(d))
}

// Blob answers what is known of a blob. With wantBody false (a client HEAD) its size is
// enough, and one upstream HEAD finds it. With wantBody true a small blob comes from
// memory or from one coalesced upstream GET, verified against d and kept; a larger one is
// not read: that it is large is remembered and Data left nil, so the caller opens its own
// stream.
func (c *Cache) Blob(ctx context.Context, o *Origin, repo string, d digest.Digest, wantBody bool) (BlobInfo, Status, error) {
	up := o.Registry.Name()
	repo, d = strings.Clone(repo), digest.Digest(strings.Clone(string(d))) // may alias request buffers
	key := blobKey(up, repo, d)
	if info, ok := c.blobInfo(key); ok && info.answers(wantBody, c.cfg.MaxBlobSize) {
		return info, Hit, nil
	}
	if err := c.store.negative(blobNegativeKey(up, repo, d)); err != nil {
		return BlobInfo{}, Miss, err
	}
	verb := "head"
	if wantBody {
		verb = "get"
	}
	info, err, _ := c.blobFlights.Do(ctx, verb+"\x00"+key, func() (BlobInfo, error) {
		if info, ok := c.blobInfo(key); ok && (info.Data != nil || (!wantBody && info.Size >= 0)) {
			return info, nil
		}
		info, err := c.fetchBlob(o, repo, d, wantBody)
		if err != nil {
			if upstream.KindOf(err) == upstream.KindNotFound || upstream.KindOf(err) == upstream.KindDenied {
				if c.cfg.NegativeTTL > 0 {
					c.store.set(blobNegativeKey(up, repo, d), &negativeEntry{err: err}, 0, c.cfg.NegativeTTL)
				}
			}
			return BlobInfo{}, err
		}
		c.store.set(key, &info, int64(len(info.Data)), 0) // content-addressed: kept until evicted
		return info, nil
	})
	return info, Miss, err
}

// answers reports whether what is known of a blob answers a request: a HEAD needs the size,
// a GET the bytes, or the knowledge that the blob is too large to keep (the caller streams).
func (info BlobInfo) answers(wantBody bool, maxBlobSize int64) bool {
	if !wantBody {
		return info.Data != nil || info.Size >= 0
	}
	return info.Data != nil || info.Size > maxBlobSize || info.Size < 0
}

func (c *Cache) blobInfo(key string) (BlobInfo, bool) {
	if v, ok := c.store.rc.Get(key); ok {
		if info, ok := v.(*BlobInfo); ok {
			return *info, true
		}
	}
	return BlobInfo{}, false
}

// fetchBlob asks upstream: a HEAD for the size, or a GET that keeps a small blob.
func (c *Cache) fetchBlob(o *Origin, repo string, d digest.Digest, wantBody bool) (BlobInfo, error) {
	if !wantBody {
		b, err := o.Registry.OpenBlob(context.Background(), http.MethodHead, repo, d, "")
		if err != nil {
			return BlobInfo{}, err
		}
		_ = b.Body.Close()
		return BlobInfo{Size: b.Size}, nil
	}
	data, _, err := o.Registry.FetchBlob(context.Background(), repo, d, c.cfg.MaxBlobSize)
	var ue *upstream.Error
	if errors.As(err, &ue) && ue.TooLarge {
		// Too large to keep: remember that, so later GETs stream straight away instead of
		// trying to read it again. Not its size: that is only the Content-Length of an answer
		// whose body was never read, and a body that ends short of it (or a length that lies)
		// must not become what every later HEAD of this digest answers. Size -1 sends a HEAD
		// upstream, whose answer is kept as a HEAD's is.
		return BlobInfo{Size: -1}, nil
	}
	if err != nil {
		return BlobInfo{}, err
	}
	return BlobInfo{Size: int64(len(data)), Data: data}, nil
}
