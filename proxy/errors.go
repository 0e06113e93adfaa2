package proxy

// The one table of errors a client can see. Each registry error code is defined here once,
// with the one HTTP status it is answered with and a default message: a call site picks the
// entry and adds only its own message (errNameInvalid.with("invalid repository name ...")),
// never a status and never a code string, so a code means the same status wherever it goes
// out and docs/api.md's table (checked against errTable by TestErrorTableIsDocumented) is the
// whole list.
//
// The codes are the distribution spec's where one fits (BLOB_UNKNOWN, DENIED, ...), then
// distribution's own (UNKNOWN, UNAVAILABLE, PAGINATION_NUMBER_INVALID), then regcache's for
// what neither has a code for (PLATFORM_INVALID, BODY_INVALID, ENDPOINT_UNKNOWN and the
// refusals before routing). UNSUPPORTED is 405, as in distribution: a method regcache does
// not serve. MANIFEST_INVALID is 502, not distribution's 400, because regcache never
// receives a push: it is always what upstream sent, and it cannot be trusted.
//
// Gateway errors (a failure of upstream, not of the request) are three codes, one status
// each, chosen from what upstream did by fromUpstream (and, for a blob stream that fails
// before its first byte, blobStreamError, by the same rule): UPSTREAM_FAILED (502: an error
// answer, a broken connection, a failing token endpoint), UPSTREAM_TIMEOUT (504: no answer
// in time) and UNAVAILABLE (503: upstream said 503, or regcache's own bound on upstream
// connections stayed full, or its breaker was open). An answer upstream gave that cannot be trusted is
// MANIFEST_INVALID for every kind (manifests, tags lists and blobs alike): the spec has no
// better code.

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"regcache/upstream"
)

// errorCode is one entry of the table.
type errorCode struct {
	code    string // on the wire: {"errors":[{"code":...}]}
	status  int
	message string // what a client reads when the call site adds nothing
	// when says in which situations the code is answered; docs/api.md's table repeats it.
	when string
}

func (c *errorCode) String() string { return c.code }

// errTable is every entry, in the order docs/api.md lists them.
var errTable []*errorCode

func register(code string, status int, message, when string) *errorCode {
	for _, c := range errTable {
		if c.code == code {
			panic("proxy: error code " + code + " registered twice")
		}
	}
	c := &errorCode{code: code, status: status, message: message, when: when}
	errTable = append(errTable, c)
	return c
}

// The table, by status. regcache's own codes are PLATFORM_INVALID, BODY_INVALID,
// REQUEST_INVALID, ENDPOINT_UNKNOWN, REQUEST_TIMEOUT, BODY_TOO_LARGE, HEADER_TOO_LARGE,
// UPSTREAM_FAILED and UPSTREAM_TIMEOUT; UNKNOWN, UNAVAILABLE and PAGINATION_NUMBER_INVALID
// are distribution's; the rest are the spec's.
var (
	errNameInvalid = register("NAME_INVALID", fasthttp.StatusBadRequest, "invalid repository name",
		"a bad repository name (including `%2f`-encoded slashes) or an image reference of the digest API that does not parse")
	errTagInvalid = register("TAG_INVALID", fasthttp.StatusBadRequest, "invalid tag",
		"a reference, or a tags list's `last=`, that is not a valid tag")
	errDigestInvalid = register("DIGEST_INVALID", fasthttp.StatusBadRequest, "invalid digest",
		"a reference that is not a valid digest")
	errPaginationInvalid = register("PAGINATION_NUMBER_INVALID", fasthttp.StatusBadRequest, "invalid number of results requested",
		"a tags list's `n=` that is not a whole number from 0 to 10000")
	errPlatformInvalid = register("PLATFORM_INVALID", fasthttp.StatusBadRequest, "invalid platform",
		"the digest API's `platform` does not parse, or has a numbered variant above 9")
	errBodyInvalid = register("BODY_INVALID", fasthttp.StatusBadRequest, "invalid request body",
		"the body of `POST /api/v1/digests` is not the JSON asked for, lists no image, or more than 1000")
	errRequestInvalid = register("REQUEST_INVALID", fasthttp.StatusBadRequest, "malformed HTTP request",
		"the request is not parsable HTTP")

	errUnauthorized = register("UNAUTHORIZED", fasthttp.StatusUnauthorized, "authentication required",
		"client auth is on and the request carries no valid credentials (with a challenge)")

	errDenied = register("DENIED", fasthttp.StatusForbidden, "requested access to the resource is denied",
		"upstream refused: the repository is missing or needs credentials regcache was not given")

	errNameUnknown = register("NAME_UNKNOWN", fasthttp.StatusNotFound, "repository name not known to registry",
		"the registry named is not configured in regcache, or upstream has no such repository")
	errManifestUnknown = register("MANIFEST_UNKNOWN", fasthttp.StatusNotFound, "manifest unknown",
		"upstream has no such tag or digest; with `strict_accept`, the client's Accept does not name the manifest's media type; the digest API finds no manifest for the platform asked")
	errBlobUnknown = register("BLOB_UNKNOWN", fasthttp.StatusNotFound, "blob unknown to registry",
		"upstream has no such blob (or no config the digest API needs to read a platform from)")
	errEndpointUnknown = register("ENDPOINT_UNKNOWN", fasthttp.StatusNotFound, "unknown endpoint",
		"a path regcache does not serve (`/v2/_catalog`, referrers, anything this page does not list), or `POST /token` (tokens are issued by GET; a 404 makes OAuth2 clients fall back to it)")

	errUnsupported = register("UNSUPPORTED", fasthttp.StatusMethodNotAllowed, "the operation is unsupported",
		"a method other than GET and HEAD under `/v2/` (regcache is read-only), or the wrong method on `/api/v1/digest` or `/api/v1/digests`")

	errRequestTimeout = register("REQUEST_TIMEOUT", fasthttp.StatusRequestTimeout, "request not received in time",
		"the request was not received within `server.read_timeout`")

	errBodyTooLarge = register("BODY_TOO_LARGE", fasthttp.StatusRequestEntityTooLarge, "request body too large",
		"a request body beyond `server.max_request_body`")

	errTooManyRequests = register("TOOMANYREQUESTS", fasthttp.StatusTooManyRequests, "too many requests",
		"upstream rate-limits and nothing is cached, or too many failed or concurrent logins (with `Retry-After`)")

	errHeaderTooLarge = register("HEADER_TOO_LARGE", fasthttp.StatusRequestHeaderFieldsTooLarge, "request header too large",
		"a request line and headers beyond `server.max_header_size`")

	errUnknown = register("UNKNOWN", fasthttp.StatusInternalServerError, "unknown error",
		"a failure inside regcache that no other code describes")

	errManifestInvalid = register("MANIFEST_INVALID", fasthttp.StatusBadGateway, "manifest invalid",
		"upstream's answer cannot be trusted: a body that does not match its digest, exceeds 4 MiB, is not a JSON object or names a `mediaType` its Content-Type contradicts (tags lists and blobs too)")
	errUpstreamFailed = register("UPSTREAM_FAILED", fasthttp.StatusBadGateway, "upstream failed",
		"upstream answered another 5xx, refused or broke the connection, redirected in a loop or to an address it may not, or its token endpoint failed or refused regcache's credentials, and nothing can be served")

	errUnavailable = register("UNAVAILABLE", fasthttp.StatusServiceUnavailable, "service unavailable",
		"upstream answered 503, all its `max_concurrent` connections stayed busy, or its breaker is open after `failures_to_open` failures in a row (with `Retry-After`), and nothing can be served")

	errUpstreamTimeout = register("UPSTREAM_TIMEOUT", fasthttp.StatusGatewayTimeout, "upstream did not answer in time",
		"upstream was too slow (the upstream `timeout` passed) and nothing can be served")
)

// apiError is an error as a client will see it: an entry of the table with this occasion's
// message.
type apiError struct {
	code       *errorCode
	message    string
	retryAfter time.Duration
}

// with is c answered with message, which says what this occasion was.
func (c *errorCode) with(message string) *apiError {
	return &apiError{code: c, message: message}
}

// err is c answered with its default message.
func (c *errorCode) err() *apiError { return c.with(c.message) }

// retryIn adds a Retry-After (rounded up to whole seconds; none when d <= 0).
func (e *apiError) retryIn(d time.Duration) *apiError {
	e.retryAfter = d
	return e
}

func (e *apiError) Error() string { return e.code.code + ": " + e.message }

func (e *apiError) item() errorItem { return errorItem{Code: e.code.code, Message: e.message} }

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
	ctx.SetStatusCode(e.code.status)
	setAPIVersion(ctx)
	if e.retryAfter > 0 {
		secs := int64((e.retryAfter + time.Second - 1) / time.Second)
		ctx.Response.Header.Set("Retry-After", strconv.FormatInt(secs, 10))
	}
	body, _ := json.Marshal(errorBody{Errors: []errorItem{e.item()}})
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

// fromUpstream maps what went wrong below into what a registry would answer, and is the one
// rule for gateway errors (see the top of this file). notFound is the entry for a 404 whose
// upstream named no code of its own. Messages come from upstream.Error, which never carries
// credentials.
func fromUpstream(err error, notFound *errorCode) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		if errors.Is(err, context.DeadlineExceeded) {
			return errUpstreamTimeout.err()
		}
		return errUnknown.with(err.Error())
	}
	switch ue.Kind {
	case upstream.KindNotFound:
		c := notFound
		switch ue.Code {
		case upstream.CodeNameUnknown:
			c = errNameUnknown
		case upstream.CodeManifestUnknown:
			c = errManifestUnknown
		case upstream.CodeBlobUnknown:
			c = errBlobUnknown
		}
		return c.with(ue.Error())
	case upstream.KindDenied:
		return errDenied.with("upstream refused: repository missing or credentials needed (" + ue.Error() + ")")
	case upstream.KindRateLimited:
		return errTooManyRequests.with(ue.Error()).retryIn(ue.RetryAfter)
	case upstream.KindInvalid:
		return errManifestInvalid.with(ue.Error())
	}
	c := errUpstreamFailed
	switch {
	case ue.Timeout:
		c = errUpstreamTimeout
	case ue.Status == fasthttp.StatusServiceUnavailable, ue.Busy, ue.BreakerOpen:
		c = errUnavailable
	}
	return c.with(ue.Error()).retryIn(ue.RetryAfter)
}
