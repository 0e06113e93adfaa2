package proxy

import (
	"errors"
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

// Limits bound what one client can cost the server. Zero fields take the defaults below,
// which are also what the configuration's server: keys default to.
type Limits struct {
	// ReadTimeout bounds reading one request from its first byte, and a new connection's
	// wait for that byte: a client trickling its header (slowloris) or sending nothing is
	// cut when it passes.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing one response (long: blobs stream).
	WriteTimeout time.Duration
	// IdleTimeout is how long a keep-alive connection may wait for its next request.
	IdleTimeout time.Duration
	// MaxHeaderSize is fasthttp's ReadBufferSize: a request line plus headers beyond it is
	// answered 431 and the connection closed.
	MaxHeaderSize int
	// MaxConnsPerIP caps simultaneous connections from one address; 0 is unlimited.
	MaxConnsPerIP int
	// Concurrency caps connections served at once; 0 is fasthttp's default.
	Concurrency int
	// MaxRequestBody is the largest request body read; larger is answered 413.
	MaxRequestBody int
}

// The defaults for zero Limits fields.
const (
	DefaultReadTimeout    = 30 * time.Second
	DefaultWriteTimeout   = 30 * time.Minute
	DefaultIdleTimeout    = 120 * time.Second
	DefaultMaxHeaderSize  = 16 << 10
	DefaultMaxRequestBody = 1 << 20
)

func (l Limits) withDefaults() Limits {
	if l.ReadTimeout <= 0 {
		l.ReadTimeout = DefaultReadTimeout
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = DefaultWriteTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.MaxHeaderSize <= 0 {
		l.MaxHeaderSize = DefaultMaxHeaderSize
	}
	if l.MaxRequestBody <= 0 {
		l.MaxRequestBody = DefaultMaxRequestBody
	}
	l.MaxConnsPerIP = max(l.MaxConnsPerIP, 0)
	l.Concurrency = max(l.Concurrency, 0)
	return l
}

// serverError answers what fasthttp refused before the handler ran (a header beyond
// max_header_size, a body beyond max_request_body, a request that timed out or does not
// parse) in the registry's error format, as every other error is. fasthttp closes the
// connection afterwards.
func serverError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	var ne net.Error
	switch {
	case errors.As(err, &small):
		writeError(ctx, errHeaderTooLarge.err())
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		writeError(ctx, errBodyTooLarge.err())
	case errors.As(err, &ne) && ne.Timeout():
		writeError(ctx, errRequestTimeout.err())
	default:
		writeError(ctx, errRequestInvalid.err())
	}
}
