package upstream

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
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
// through; a 206 is an error unless rangeHeader asked for one. Redirects to CDNs are
// followed here, so clients never see them. A layer may take long to stream, so the
// upstream timeout bounds the wait for answer headers and then each silence in the body
// (any period that brings less than minStreamProgress bytes), not the whole transfer; ctx
// can end it early. Close the body.
func (r *Registry) OpenBlob(ctx context.Context, method, repo string, d digest.Digest, rangeHeader string) (_ *Blob, err error) {
	probe, err := r.enter()
	if err != nil {
		return nil, err
	}
	defer func(caller context.Context) { r.leave(caller, probe, err) }(ctx)
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
			e.Code = CodeBlobUnknown
		}
		return nil, err
	}
	if msg := blobStatusProblem(resp, rangeHeader); msg != "" {
		drainClose(resp)
		cancel()
		return nil, &Error{Kind: KindInvalid, Upstream: r.name, Status: resp.StatusCode, Message: msg}
	}
	streamOutsideBound(resp) // the body may stream for minutes: see slots.go
	return &Blob{
		Body:         newIdleReader(resp.Body, r.timeout, cancel),
		Size:         resp.ContentLength,
		Status:       resp.StatusCode,
		ContentType:  resp.Header.Get("Content-Type"),
		ContentRange: resp.Header.Get("Content-Range"),
	}, nil
}

// blobStatusProblem says what is wrong with a blob answer's status, "" when nothing is.
// A whole blob is 200. A 206 is a part, which no digest can verify, so it is only taken as
// the answer to a Range the client asked for, and only with the Content-Range that says
// which part it is: a 206 to a request for the whole blob (a CDN handing back a part, or
// other bytes) would otherwise pass as the blob its digest names. A multipart/byteranges
// answer (no Content-Range) is refused too: it is not passed through intact.
func blobStatusProblem(resp *http.Response, rangeHeader string) string {
	switch {
	case resp.StatusCode == http.StatusOK:
		return ""
	case resp.StatusCode != http.StatusPartialContent:
		return "unexpected answer to a blob request"
	case rangeHeader == "":
		return "partial content (206) answered to a request for the whole blob"
	case resp.Header.Get("Content-Range") == "":
		return "partial content (206) without a Content-Range"
	}
	return ""
}

// GetBlob asks for blob d with GET, for a cache that keeps small blobs, in one request:
// a whole blob of at most limit bytes is read, verified against d and returned as data;
// anything else comes back open as b, to stream: a larger blob (verified against d as it
// passes, a mismatch ending it with ErrDigestMismatch) or the part a client's Range asked
// for (which no digest verifies). Exactly one of data and b is set when err is nil. The
// read of a small blob is bounded by the upstream timeout as a whole, not per silence.
func (r *Registry) GetBlob(ctx context.Context, repo string, d digest.Digest, rangeHeader string, limit int64) (data []byte, b *Blob, err error) {
	b, err = r.OpenBlob(ctx, http.MethodGet, repo, d, rangeHeader)
	if err != nil {
		return nil, nil, err
	}
	if b.Status != http.StatusOK {
		return nil, b, nil // a part, for the client that asked for it
	}
	whole := func(prefix []byte) *Blob {
		body := b.Body
		var rd io.Reader = body
		if len(prefix) > 0 {
			rd = io.MultiReader(bytes.NewReader(prefix), body)
		}
		b.Body = readCloser{NewVerifyingReader(rd, d, b.Size), body}
		return b
	}
	if b.Size > limit {
		return nil, whole(nil), nil
	}
	// The timer closes the body it was given: b itself is set to nil on the error returns
	// below, and a timer that fires just as one of them runs must not read it.
	body := b.Body
	expired := time.AfterFunc(r.timeout, func() { _ = body.Close() })
	data, err = io.ReadAll(io.LimitReader(b.Body, limit+1))
	if !expired.Stop() {
		err = context.DeadlineExceeded // the timer closed the body under the read
	}
	if err != nil {
		_ = b.Body.Close()
		return nil, nil, r.unavailable(err, "reading blob")
	}
	if int64(len(data)) > limit {
		// Its length was unsaid and it is larger than the limit: the rest streams behind
		// what was read.
		return nil, whole(data), nil
	}
	_ = b.Body.Close()
	if !d.Algorithm().Available() || d.Algorithm().FromBytes(data) != d {
		return nil, nil, r.invalid("blob body does not match its digest %s", d)
	}
	return data, nil, nil
}

// readCloser reads from one reader and closes another: a body wrapped for verification.
type readCloser struct {
	io.Reader
	io.Closer
}

// minStreamProgress is the least a blob stream must bring in each idle period. A trickle
// (a byte every few hundred milliseconds) is a stall that only looks alive: counting any
// byte as progress would let it hold a client, a worker and a connection for days.
// 32 KiB per period is about 1 KiB/s with the default 30 s timeout.
const minStreamProgress = 32 << 10

// idleReader ends a transfer (by cancelling its request) when upstream sends less than
// minStreamProgress bytes in idle: a stalled or trickling CDN must not hold a client and a
// worker forever.
type idleReader struct {
	rc     io.ReadCloser
	idle   time.Duration
	timer  *time.Timer
	cancel context.CancelFunc
	got    int64 // bytes since the timer was last reset; Read is not called concurrently
	fired  atomic.Bool
}

// errStreamStalled ends a stream the idle timer cut. It is a deadline, so that callers
// report upstream as too slow (504), not as broken.
var errStreamStalled = fmt.Errorf("upstream sent less than %d KiB within the timeout: %w", minStreamProgress>>10, context.DeadlineExceeded)

func newIdleReader(rc io.ReadCloser, idle time.Duration, cancel context.CancelFunc) *idleReader {
	r := &idleReader{rc: rc, idle: idle, cancel: cancel}
	r.timer = time.AfterFunc(idle, func() { r.fired.Store(true); cancel() })
	return r
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if err != nil && err != io.EOF && r.fired.Load() {
		err = errStreamStalled
	}
	if r.got += int64(n); r.got >= minStreamProgress {
		r.got = 0
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
