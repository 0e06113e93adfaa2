package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"regcache/upstream"
)

// Registry error codes (distribution spec, "Error Codes").
const (
	codeBlobUnknown     = "BLOB_UNKNOWN"
	codeDenied          = "DENIED"
	codeDigestInvalid   = "DIGEST_INVALID"
	codeManifestInvalid = "MANIFEST_INVALID"
	codeManifestUnknown = "MANIFEST_UNKNOWN"
	codeNameInvalid     = "NAME_INVALID"
	codeNameUnknown     = "NAME_UNKNOWN"
	codeTagInvalid      = "TAG_INVALID"
	codeTooManyRequests = "TOOMANYREQUESTS"
	codeUnauthorized    = "UNAUTHORIZED"
	codeUnavailable     = "UNAVAILABLE"
	codeUnknown         = "UNKNOWN"
	codeUnsupported     = "UNSUPPORTED"
)

// apiError is an error as a client will see it.
type apiError struct {
	status     int
	code       string
	message    string
	retryAfter time.Duration
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func newError(status int, code, message string) *apiError {
	return &apiError{status: status, code: code, message: message}
}

type errorBody struct {
	Errors []errorItem `json:"errors"`
}

type errorItem struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeError is the one place a client-visible error is written, in the registry's JSON
// error format so that every client's error path understands it.
func writeError(ctx *fasthttp.RequestCtx, e *apiError) {
	ctx.Response.Reset()
	ctx.SetStatusCode(e.status)
	setAPIVersion(ctx)
	if e.retryAfter > 0 {
		secs := int64((e.retryAfter + time.Second - 1) / time.Second)
		ctx.Response.Header.Set("Retry-After", strconv.FormatInt(secs, 10))
	}
	body, _ := json.Marshal(errorBody{Errors: []errorItem{{Code: e.code, Message: e.message}}})
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

// fromUpstream maps what went wrong below into what a registry would answer. Messages
// come from upstream.Error, which never carries credentials.
func fromUpstream(err error, notFoundCode string) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		if errors.Is(err, context.DeadlineExceeded) {
			return newError(fasthttp.StatusGatewayTimeout, codeUnavailable, "upstream did not answer in time")
		}
		return newError(fasthttp.StatusInternalServerError, codeUnknown, err.Error())
	}
	switch ue.Kind {
	case upstream.KindNotFound:
		code := notFoundCode
		switch ue.Code {
		case codeNameUnknown, codeManifestUnknown, codeBlobUnknown:
			code = ue.Code
		}
		return newError(fasthttp.StatusNotFound, code, ue.Error())
	case upstream.KindDenied:
		return newError(fasthttp.StatusForbidden, codeDenied,
			"upstream refused: repository missing or credentials needed ("+ue.Error()+")")
	case upstream.KindRateLimited:
		e := newError(fasthttp.StatusTooManyRequests, codeTooManyRequests, ue.Error())
		e.retryAfter = ue.RetryAfter
		return e
	case upstream.KindInvalid:
		return newError(fasthttp.StatusBadGateway, codeManifestInvalid, ue.Error())
	default:
		status := fasthttp.StatusBadGateway
		switch {
		case ue.Timeout:
			status = fasthttp.StatusGatewayTimeout
		case ue.Status == fasthttp.StatusServiceUnavailable, ue.Busy:
			status = fasthttp.StatusServiceUnavailable
		}
		e := newError(status, codeUnavailable, ue.Error())
		e.retryAfter = ue.RetryAfter
		return e
	}
}
