// Package proxy is regcache's front end: it routes fasthttp requests under /v2/ to an
// upstream, asks the cache, negotiates the media type with the client and writes registry
// answers and registry errors.
package proxy

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"regcache/cache"
	"regcache/internal/feed"
)

// Upstream is one configured registry as the front end sees it.
type Upstream struct {
	// Name and Aliases are what clients may write (ns=, first path segment).
	Name    string
	Aliases []string
	Origin  *cache.Origin
	// StrictAccept answers 404 like a registry when the client's Accept leaves out the
	// manifest's type; off, the manifest is served with its real type anyway.
	StrictAccept bool
	// DockerHub adds "library/" to one-segment repository names.
	DockerHub bool

	// answered counts the client requests for this upstream by cache result (None: no
	// answer from the cache, an error): the status page's figures and their metrics.
	answered [cache.None + 1]atomic.Uint64
}

// count records one client request for u answered with st (an atomic add: no lock).
func (u *Upstream) count(st cache.Status) { u.answered[cacheIndex(st)].Add(1) }

// Options configure a Proxy.
type Options struct {
	Upstreams []*Upstream
	// Default is the name of the upstream for /v2/<repo>/... with neither ns nor prefix.
	Default string
	Cache   *cache.Cache
	Logger  *zap.Logger
	// AccessLog, when set, gets one line per request.
	AccessLog *AccessLog
	// Events, when set, is the change feed served at /api/v1/events.
	Events *feed.Log
	// Auth is client-facing authentication; nil is auth off (anonymous tokens).
	Auth *ClientAuth
	// Metrics, when set, counts requests and serves /metrics.
	Metrics *Metrics
	// Limits bound what one client may cost (limits.go); zero fields take the defaults.
	Limits Limits
}

// Proxy answers registry requests. Its Handler is safe for concurrent use.
type Proxy struct {
	names     map[string]*Upstream // lower-cased names and aliases
	upstreams []*Upstream          // as configured, for /readyz
	def       *Upstream
	cache     *cache.Cache
	log       *zap.Logger
	accessLog *AccessLog
	events    *feed.Log
	auth      *ClientAuth
	metrics   *Metrics
	limits    Limits
	ready     atomic.Bool
}

// New builds a Proxy.
func New(opts Options) (*Proxy, error) {
	p := &Proxy{names: map[string]*Upstream{}, upstreams: opts.Upstreams, cache: opts.Cache, log: opts.Logger, accessLog: opts.AccessLog, events: opts.Events, auth: opts.Auth, metrics: opts.Metrics, limits: opts.Limits.withDefaults()}
	if p.log == nil {
		p.log = zap.NewNop()
	}
	if p.auth == nil {
		var err error
		if p.auth, err = NewClientAuth(ClientAuthOptions{}); err != nil {
			return nil, err
		}
	}
	for _, u := range opts.Upstreams {
		for _, n := range append([]string{u.Name}, u.Aliases...) {
			key := strings.ToLower(n)
			if _, dup := p.names[key]; dup {
				return nil, fmt.Errorf("proxy: upstream name %q used twice", n)
			}
			p.names[key] = u
		}
	}
	p.def = p.names[strings.ToLower(opts.Default)]
	if p.def == nil {
		return nil, fmt.Errorf("proxy: default upstream %q is not configured", opts.Default)
	}
	return p, nil
}

// lookup finds an upstream by name or alias; host names compare case-insensitively.
func (p *Proxy) lookup(name []byte) *Upstream {
	if u, ok := p.names[string(name)]; ok {
		return u
	}
	var buf [128]byte
	if len(name) > len(buf) {
		return nil
	}
	lower := buf[:len(name)]
	for i, b := range name {
		if b >= 'A' && b <= 'Z' {
			b += 'a' - 'A'
		}
		lower[i] = b
	}
	return p.names[string(lower)]
}

// Server returns a fasthttp server for the handler with limits suited to a registry front.
func (p *Proxy) Server() *fasthttp.Server {
	l := p.limits
	return &fasthttp.Server{
		Handler:     p.Handler,
		Name:        "regcache",
		ReadTimeout: l.ReadTimeout,
		// One deadline for a whole response: blobs (layers) may stream for long. A stalled
		// upstream is cut by its idle timeout (upstream.OpenBlob).
		WriteTimeout:       l.WriteTimeout,
		IdleTimeout:        l.IdleTimeout,
		MaxRequestBodySize: l.MaxRequestBody,
		// A request line plus headers must fit the read buffer, or it is answered 431.
		ReadBufferSize: l.MaxHeaderSize,
		MaxConnsPerIP:  l.MaxConnsPerIP,
		Concurrency:    l.Concurrency,
		// An idle keep-alive connection gives its read and write buffers back to the pools:
		// otherwise each one holds ~24 KiB for as long as it stays open.
		ReduceMemoryUsage: true,
		// Requests fasthttp refuses before the handler still get a registry error body.
		ErrorHandler:          serverError,
		NoDefaultServerHeader: true,
		NoDefaultDate:         false,
		// fasthttp's header-parse errors otherwise quote the raw request, Authorization too.
		SecureErrorLogMessage: true,
		// Paths are parsed from the raw request line; see parseRoute.
		DisablePreParseMultipartForm: true,
		Logger:                       zapPrintf{p.log},
	}
}

// MetricsServer is a server for metrics_listen: /metrics alone, without client auth (a
// scraper holds no credentials), with Server's limits.
func (p *Proxy) MetricsServer() *fasthttp.Server {
	s := p.Server()
	s.Handler = p.metricsOnly
	return s
}

func (p *Proxy) metricsOnly(ctx *fasthttp.RequestCtx) {
	if string(ctx.URI().PathOriginal()) != "/metrics" || p.metrics == nil {
		writeError(ctx, errEndpointUnknown.with("not found: this address serves /metrics only"))
		return
	}
	start := ctx.Time()
	p.metrics.handler(ctx)
	p.metrics.observe(KindMetrics, ctx.Method(), ctx.Response.StatusCode(), cache.None, time.Since(start))
}

// zapPrintf lets fasthttp's own error messages reach the structured log.
type zapPrintf struct{ log *zap.Logger }

func (z zapPrintf) Printf(format string, args ...any) { z.log.Warn(fmt.Sprintf(format, args...)) }

var (
	strAPIVersion   = []byte("Docker-Distribution-API-Version")
	strRegistry20   = []byte("registry/2.0")
	strDigestHeader = []byte("Docker-Content-Digest")
	strV2Slash      = []byte("/v2/")
	strXCache       = []byte("X-Cache")
	strAge          = []byte("Age")
	strNS           = []byte("ns")
	// xCache is the X-Cache value of each status the cache gives, as bytes for the header.
	xCache = func() (v [cache.None][]byte) {
		for st := range cache.None {
			v[st] = []byte(st.String())
		}
		return v
	}()
)

func setAPIVersion(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.SetBytesKV(strAPIVersion, strRegistry20)
}

// Handler is the fasthttp request handler.
func (p *Proxy) Handler(ctx *fasthttp.RequestCtx) {
	start := ctx.Time() // read by fasthttp as the request arrived: no second clock read
	var rt Route
	var st = cache.None
	r := KindOther
	v2, link, ps, aerr := p.v2Path(ctx.URI().PathOriginal())
	if ps != nil {
		defer scratchPool.Put(ps)
	}
	path := v2
	switch {
	case string(path) == "/healthz":
		r = KindHealth
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.SetBodyString("ok\n")
	case string(path) == "/readyz":
		// Open like /healthz, or a probe would need credentials: it shows categories only.
		r = KindHealth
		p.serveReady(ctx)
	case string(path) == "/token":
		r = KindToken
		p.auth.serveToken(ctx)
	case !p.auth.authorize(ctx, path):
		// answered 401 with the challenge
	case aerr != nil:
		writeError(ctx, aerr)
	case string(path) == "/v2" || bytes.HasPrefix(path, strV2Slash):
		rt, st = p.serveV2(ctx, path, link, start)
		r = rt.Kind
		if rt.Upstream != nil {
			rt.Upstream.count(st)
		}
		defer rt.release()
	case (string(path) == "/" || string(path) == "/status") && p.metrics != nil:
		r = KindStatus
		p.serveStatus(ctx)
	case string(path) == "/metrics" && p.metrics != nil:
		r = KindMetrics
		p.metrics.handler(ctx)
	case string(path) == "/api/v1/digest" && (ctx.IsGet() || ctx.IsHead()):
		r = KindAPI
		p.serveDigest(ctx, start)
	case string(path) == "/api/v1/digests" && ctx.IsPost():
		r = KindAPI
		p.serveDigests(ctx)
	case string(path) == "/api/v1/events" && ctx.IsGet() && p.events != nil:
		r = KindAPI
		p.serveEvents(ctx)
	case string(path) == "/api/v1/digest" || string(path) == "/api/v1/digests":
		r = KindAPI
		writeError(ctx, errUnsupported.with("use GET /api/v1/digest?image=... or POST /api/v1/digests"))
	default:
		writeError(ctx, errEndpointUnknown.with("not found: regcache serves the registry API under /v2/"))
	}
	if p.metrics != nil || p.accessLog != nil {
		took := time.Since(start)
		if p.metrics != nil {
			p.metrics.observe(r, ctx.Method(), ctx.Response.StatusCode(), st, took)
		}
		if p.accessLog != nil {
			p.accessLog.log(ctx, &rt, st, took, start.Add(took))
		}
	}
}

// SetReady marks the proxy ready (config loaded, listener open) or not (shutting down).
func (p *Proxy) SetReady(ready bool) { p.ready.Store(ready) }

func (p *Proxy) serveReady(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("text/plain; charset=utf-8")
	if !p.ready.Load() {
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		ctx.SetBodyString("not ready\n")
		return
	}
	ctx.SetBodyString("ready\n")
	// Redis is optional: a replica without it still serves from memory and upstream, so
	// its state is detail here, never a reason to leave the load balancer.
	if rs := p.cache.RedisStats(); rs != nil {
		if rs.Up {
			ctx.WriteString("redis: up\n")
		} else {
			fmt.Fprintf(ctx, "redis: down since %s (%s); serving from memory and upstream\n",
				rs.DownSince.UTC().Format(time.RFC3339), rs.Reason)
		}
	}
	// An upstream refusing regcache's credentials, or failing until its breaker opened, is
	// detail too: the other upstreams, and this one's stale answers, are still served. Only
	// its name, the refusal's category and status show: never the credentials, nor the token
	// endpoint's URL or text.
	for _, u := range p.upstreams {
		if cs := u.Origin.Registry.Credentials(); !cs.FailingSince.IsZero() {
			fmt.Fprintf(ctx, "upstream %s: %s since %s (HTTP %d); serving stale answers where cached\n",
				u.Name, cs.Reason, cs.FailingSince.UTC().Format(time.RFC3339), cs.Status)
		}
		if bs := u.Origin.Registry.Breaker(); bs.Open {
			fmt.Fprintf(ctx, "upstream %s: breaker open since %s after %d failures in a row; next probe at %s\n",
				u.Name, bs.OpenSince.UTC().Format(time.RFC3339), bs.Failures, bs.NextProbe.UTC().Format(time.RFC3339))
		}
	}
}

// getOrHeadOnly answers a method other than GET and HEAD: 405, saying why.
func getOrHeadOnly(ctx *fasthttp.RequestCtx, why string) {
	writeError(ctx, errUnsupported.with(why))
	// RFC 9110 §15.5.6: a 405 must list what the resource does allow.
	ctx.Response.Header.Set("Allow", "GET, HEAD")
}

// serveV2 answers path, a /v2/ path; link is the same path in the client's own form.
func (p *Proxy) serveV2(ctx *fasthttp.RequestCtx, path, link []byte, now time.Time) (Route, cache.Status) {
	if !ctx.IsGet() && !ctx.IsHead() {
		getOrHeadOnly(ctx, "regcache is read-only: only GET and HEAD are supported")
		return Route{}, cache.None
	}
	rt, aerr := p.parseRoute(path, ctx.QueryArgs().PeekBytes(strNS))
	if aerr != nil {
		writeError(ctx, aerr)
		return rt, cache.None
	}
	switch rt.Kind {
	case KindBase:
		setAPIVersion(ctx)
		ctx.SetContentType("application/json")
		ctx.SetBodyString("{}")
		return rt, cache.None
	case KindManifest:
		return rt, p.serveManifest(ctx, &rt, now)
	}
	if aerr := checkNames(&rt); aerr != nil {
		writeError(ctx, aerr)
		rt.Upstream = nil // invalid names are not logged as routed
		return rt, cache.None
	}
	if rt.Kind == KindTags {
		return rt, p.serveTags(ctx, &rt, link, now)
	}
	return rt, p.serveBlob(ctx, &rt)
}

func (p *Proxy) serveManifest(ctx *fasthttp.RequestCtx, rt *Route, now time.Time) cache.Status {
	head := ctx.IsHead()
	req := cache.Request{Origin: rt.Upstream.Origin, Repo: rt.Repo, Ref: rt.Ref, WantBody: !head, Now: now}
	a, hit := p.cache.Hit(&req)
	if !hit {
		if aerr := checkNames(rt); aerr != nil {
			writeError(ctx, aerr)
			rt.Upstream = nil // invalid names are not logged as routed
			return cache.None
		}
		var err error
		if a, err = p.cache.Load(detached, req); err != nil {
			writeError(ctx, fromUpstream(err, errManifestUnknown))
			return cache.None
		}
	}
	if rt.Upstream.StrictAccept && !accepts(ctx.Request.Header.PeekAll("Accept"), a.MediaType) {
		writeError(ctx, errManifestUnknown.with(notAcceptedMessage(a.MediaType)))
		return cache.None // an error answer, whatever the cache held: not a hit, nothing saved
	}
	h := &ctx.Response.Header
	h.SetContentType(a.MediaType)
	// Our header names are canonical already: SetCanonical skips fasthttp's normalizing.
	h.SetCanonical(strDigestHeader, s2b(string(a.Digest)))
	h.SetCanonical(strAPIVersion, strRegistry20)
	h.SetCanonical(strXCache, xCache[a.Status])
	setAge(h, now, a.FetchedAt)
	if head {
		// fasthttp sends no body for HEAD; the length is the manifest's, as a registry's is.
		ctx.Response.SkipBody = true
		h.SetContentLength(int(a.Size))
	} else {
		ctx.Response.SetBodyRaw(a.Body)
	}
	return a.Status
}

// ageSeconds is an answer's Age (RFC 9111): whole seconds since it was fetched or last
// confirmed upstream, as of now (the request's clock read, which precedes a miss's fetch).
func ageSeconds(now, fetched time.Time) int64 {
	return max(int64(now.Sub(fetched)/time.Second), 0)
}

// setAge sends Age for an answer fetched at fetched; none for an answer with no fetch time
// (a manifest by digest: it never goes stale).
func setAge(h *fasthttp.ResponseHeader, now, fetched time.Time) {
	if fetched.IsZero() {
		return
	}
	var buf [20]byte
	h.SetCanonical(strAge, strconv.AppendInt(buf[:0], ageSeconds(now, fetched), 10))
}

// detached is the context handed down for a request's lookups. It is not the
// *fasthttp.RequestCtx: fasthttp recycles that after the handler returns, and a context
// derived from it (revalidate_wait's timer) would read it afterwards. Every wait below is
// bounded by revalidate_wait or the upstream timeout instead, and fasthttp does not tell of
// a client that went away in any case.
var detached = context.Background()

// s2b views s as bytes for fasthttp calls that only read (and copy) them.
func s2b(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
