package upstream

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/opencontainers/go-digest"
)

// Blob is an open upstream blob answer. The body streams; Close it.
type Blob struct {
	Body io.ReadCloser
	// Size is the Content-Length of this answer (the range's length for a 206), -1 if unsaid.
	Size int64
	// Status is 200, or 206 for a range.
	Status       int
	ContentType  string
	ContentRange string
}

// OpenBlob asks for blob d of repo with method (GET or HEAD), passing a client's Range
// through. Redirects to CDNs are followed here, so clients never see them. A layer may
// take long to stream, so the upstream timeout bounds the wait for answer headers and then
// each silence in the body, not the whole transfer; ctx can end it early. Close the body.
func (r *Registry) OpenBlob(ctx context.Context, method, repo string, d digest.Digest, rangeHeader string) (*Blob, error) {
	ctx, cancel := context.WithCancel(ctx)
	resp, err := r.doWith(ctx, method, repo, "blobs/"+string(d), func(req *http.Request) {
		if rangeHeader != "" {
			req.Header.Set("Range", rangeHeader)
		}
	})
	if err != nil {
		cancel()
		return nil, err
	}
	if err := r.checkResponse(resp); err != nil {
		drainClose(resp)
		cancel()
		if e, ok := err.(*Error); ok && e.Kind == KindNotFound && e.Code == "" {
			e.Code = "BLOB_UNKNOWN"
		}
		return nil, err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent {
		drainClose(resp)
		cancel()
		return nil, &Error{Kind: KindInvalid, Upstream: r.name, Status: resp.StatusCode, Message: "unexpected answer to a blob request"}
	}
	return &Blob{
		Body:         newIdleReader(resp.Body, r.timeout, cancel),
		Size:         resp.ContentLength,
		Status:       resp.StatusCode,
		ContentType:  resp.Header.Get("Content-Type"),
		ContentRange: resp.Header.Get("Content-Range"),
	}, nil
}

// FetchBlob reads a whole blob of at most limit bytes and verifies it against d: the path
// for small blobs (image configs) that are worth caching. A larger blob is not read: the
// error has TooLarge set and size is upstream's Content-Length (-1 when unsaid).
func (r *Registry) FetchBlob(ctx context.Context, repo string, d digest.Digest, limit int64) (data []byte, size int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	b, err := r.OpenBlob(ctx, http.MethodGet, repo, d, "")
	if err != nil {
		return nil, -1, err
	}
	defer b.Body.Close()
	tooLarge := &Error{Kind: KindInvalid, Upstream: r.name, TooLarge: true, Message: "blob larger than the cache limit"}
	if b.Size > limit {
		return nil, b.Size, tooLarge
	}
	data, err = io.ReadAll(io.LimitReader(b.Body, limit+1))
	if err != nil {
		return nil, b.Size, r.unavailable(err, "reading blob")
	}
	if int64(len(data)) > limit {
		return nil, b.Size, tooLarge
	}
	if !d.Algorithm().Available() || d.Algorithm().FromBytes(data) != d {
		return nil, b.Size, r.invalid("blob body does not match its digest %s", d)
	}
	return data, int64(len(data)), nil
}

// idleReader ends a transfer (by cancelling its request) when upstream sends nothing for
// idle: a stalled CDN must not hold a client and a worker forever.
type idleReader struct {
	rc     io.ReadCloser
	idle   time.Duration
	timer  *time.Timer
	cancel context.CancelFunc
}

func newIdleReader(rc io.ReadCloser, idle time.Duration, cancel context.CancelFunc) *idleReader {
	return &idleReader{rc: rc, idle: idle, timer: time.AfterFunc(idle, cancel), cancel: cancel}
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if n > 0 {
		r.timer.Reset(r.idle)
	}
	return n, err
}

func (r *idleReader) Close() error {
	r.timer.Stop()
	err := r.rc.Close()
	r.cancel()
	return err
}
