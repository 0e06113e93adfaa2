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

// serveBlob answers GET/HEAD /v2/<name>/blobs/<digest>. Small blobs (configs) come from
// the cache, verified; larger ones stream from upstream (CDN redirects followed there),
// verified as they pass, with Range passed through (a part is answered 206 without the
// digest header, which names only the whole blob).
func (p *Proxy) serveBlob(ctx *fasthttp.RequestCtx, rt *Route) cache.Status {
	d := digest.Digest(rt.Ref)
	rangeHeader := string(ctx.Request.Header.Peek("Range"))
	info, st, err := p.cache.Blob(detached, rt.Upstream.Origin, rt.Repo, d, !ctx.IsHead())
	if err != nil {
		writeError(ctx, fromUpstream(err, errBlobUnknown))
		return noStatus
	}
	h := &ctx.Response.Header
	setAPIVersion(ctx)
	h.SetBytesKV(strDigestHeader, []byte(d))
	if info.Data != nil {
		// A cached blob is small: a Range is answered with the whole blob (RFC 9110 allows it).
		h.SetContentType("application/octet-stream")
		h.SetBytesKV(strXCache, cacheStatusStrings[st])
		if ctx.IsHead() {
			ctx.Response.SkipBody = true
			h.SetContentLength(len(info.Data))
		} else {
			ctx.Response.SetBodyRaw(info.Data)
		}
		return st
	}
	if ctx.IsHead() && info.Size >= 0 {
		h.SetContentType("application/octet-stream")
		h.SetBytesKV(strXCache, cacheStatusStrings[st])
		h.SetBytesKV(strAcceptRanges, []byte("bytes"))
		ctx.Response.SkipBody = true
		h.SetContentLength(int(info.Size))
		return st
	}
	method := fasthttp.MethodGet
	if ctx.IsHead() {
		method = fasthttp.MethodHead
	}
	// The stream outlives the handler (fasthttp writes it after we return); it ends, and
	// its upstream connection with it, when fasthttp closes the body.
	sctx, cancel := context.WithCancel(context.Background())
	b, err := rt.Upstream.Origin.Registry.OpenBlob(sctx, method, rt.Repo, d, rangeHeader)
	if err != nil {
		cancel()
		writeError(ctx, fromUpstream(err, errBlobUnknown))
		return noStatus
	}
	var body io.Reader = b.Body
	if !ctx.IsHead() {
		if b.Status == fasthttp.StatusOK { // a whole blob, even when a Range was ignored
			body = upstream.NewVerifyingReader(b.Body, d, b.Size)
		}
		// Wait for the first byte before the status line goes out: a stream that fails
		// before it (a reset, a stall past the timeout, a one-byte blob that does not
		// verify) still gets a registry error instead of a connection closed on a 200.
		first := make([]byte, 1)
		n, err := io.ReadFull(body, first)
		if err != nil && !(err == io.EOF && n == 0) {
			b.Body.Close()
			cancel()
			writeError(ctx, blobStreamError(err))
			return noStatus
		}
		if n == 0 {
			body = bytes.NewReader(nil) // empty, and verified: the reader saw its end
		} else {
			body = io.MultiReader(bytes.NewReader(first), body)
		}
	}
	ctx.SetStatusCode(b.Status)
	h.SetContentType("application/octet-stream")
	h.SetBytesKV(strXCache, cacheStatusStrings[cache.Miss])
	h.SetBytesKV(strAcceptRanges, []byte("bytes"))
	if b.Status == fasthttp.StatusPartialContent {
		// Only a client's own Range gets here (upstream refuses a 206 to anything else). A
		// part cannot be verified, and the digest header would claim it is the blob.
		h.DelBytes(strDigestHeader)
		h.Set("Content-Range", b.ContentRange)
	}
	if ctx.IsHead() {
		b.Body.Close()
		cancel()
		ctx.Response.SkipBody = true
		if b.Size >= 0 {
			h.SetContentLength(int(b.Size))
		}
		return cache.Miss
	}
	ctx.SetBodyStream(&streamCloser{Reader: body, close: func() { b.Body.Close(); cancel() }}, int(b.Size))
	return cache.Miss
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
