package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"

	"github.com/opencontainers/go-digest"
	"github.com/valyala/fasthttp"

	"regcache/cache"
	"regcache/upstream"
)

var strAcceptRanges = []byte("Accept-Ranges")

// serveBlob answers GET/HEAD /v2/<name>/blobs/<digest> with what the cache gives: a
// small blob's verified bytes, a size (a HEAD), or upstream's stream of a larger one
// (verified as it passes by the cache) with a client's Range passed through (a part is
// answered 206 without the digest header, which names only the whole blob).
func (p *Proxy) serveBlob(ctx *fasthttp.RequestCtx, rt *Route) cache.Status {
	d := digest.Digest(rt.Ref)
	head := ctx.IsHead()
	b, st, err := p.cache.Blob(detached, rt.Upstream.Origin, rt.Repo, d, cache.BlobRequest{Body: !head, Range: string(ctx.Request.Header.Peek("Range"))})
	if err != nil {
		writeError(ctx, fromUpstream(err, errBlobUnknown))
		return cache.None
	}
	h := &ctx.Response.Header
	setAPIVersion(ctx)
	h.SetBytesKV(strDigestHeader, []byte(d))
	if b.Stream == nil {
		// Held bytes are a small blob's: a Range is answered with the whole blob (RFC 9110
		// allows it).
		h.SetContentType("application/octet-stream")
		h.SetBytesKV(strXCache, xCache[st])
		switch {
		case b.Data == nil: // a HEAD, answered with the size
			h.SetBytesKV(strAcceptRanges, []byte("bytes"))
			ctx.Response.SkipBody = true
			if b.Size >= 0 {
				h.SetContentLength(int(b.Size))
			}
		case head:
			ctx.Response.SkipBody = true
			h.SetContentLength(len(b.Data))
		default:
			ctx.Response.SetBodyRaw(b.Data)
		}
		return st
	}
	s := b.Stream
	// Wait for the first byte before the status line goes out: a stream that fails before
	// it (a reset, a stall past the timeout, a one-byte blob that does not verify) still
	// gets a registry error instead of a connection closed on a 200.
	var body io.Reader = s.Body
	first := make([]byte, 1)
	n, err := io.ReadFull(body, first)
	if err != nil && !(err == io.EOF && n == 0) {
		s.Body.Close()
		writeError(ctx, blobStreamError(err))
		return cache.None
	}
	if n == 0 {
		body = bytes.NewReader(nil) // empty, and verified: the reader saw its end
	} else {
		body = io.MultiReader(bytes.NewReader(first), body)
	}
	ctx.SetStatusCode(s.Status)
	h.SetContentType("application/octet-stream")
	h.SetBytesKV(strXCache, xCache[st])
	h.SetBytesKV(strAcceptRanges, []byte("bytes"))
	if s.Status == fasthttp.StatusPartialContent {
		// Only a client's own Range gets here (upstream refuses a 206 to anything else). A
		// part cannot be verified, and the digest header would claim it is the blob.
		h.DelBytes(strDigestHeader)
		h.Set("Content-Range", s.ContentRange)
	}
	// The stream outlives the handler (fasthttp writes it after we return); it ends, and
	// its upstream connection with it, when fasthttp closes the body.
	ctx.SetBodyStream(&streamCloser{Reader: body, close: func() { s.Body.Close() }}, int(s.Size))
	return st
}

// blobStreamError is the answer for a blob stream that failed before its first byte.
func blobStreamError(err error) *apiError {
	switch {
	case errors.Is(err, upstream.ErrDigestMismatch):
		// An answer that cannot be trusted, as a small blob's would be (see errors.go).
		return errManifestInvalid.with("upstream blob does not match its digest")
	case errors.Is(err, context.DeadlineExceeded):
		return errUpstreamTimeout.with("upstream blob stream sent nothing in time")
	}
	var ue *upstream.Error
	if errors.As(err, &ue) {
		return fromUpstream(err, errBlobUnknown)
	}
	return errUpstreamFailed.with("upstream blob stream failed before its first byte")
}

// streamCloser releases the upstream stream when fasthttp is done with the body.
type streamCloser struct {
	io.Reader
	close func()
}

func (s *streamCloser) Close() error {
	s.close()
	return nil
}
