// Package upstream speaks the distribution protocol to one configured registry: it reads
// auth challenges and exchanges tokens, follows redirects safely, asks for manifests with the
// full Accept set, verifies what comes back, and returns typed errors (*Error) that callers
// can act on without knowing HTTP.
package upstream

import (
	"context"
	_ "crypto/sha256" // go-digest needs the hash registered
	_ "crypto/sha512"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// MaxManifestSize is the largest manifest accepted (the distribution spec's own limit for
// what a registry must accept is 4 MiB). Larger answers are refused before they are read.
const MaxManifestSize = 4 << 20

// Defaults for zero Options fields (upstreams[].timeout and connect_timeout).
const (
	DefaultTimeout        = 30 * time.Second
	DefaultConnectTimeout = 5 * time.Second
)

// Options configure a Registry.
type Options struct {
	// Name is how logs and errors name the upstream (the configured name, e.g. "docker.io").
	Name string
	// URL is the registry's base URL, http or https.
	URL string
	// Username and Password go to the token endpoint, or as Basic auth when the registry
	// asks for Basic. Empty means anonymous.
	Username, Password string
	// Timeout bounds one whole operation (token exchange, redirects and body included);
	// 0 means DefaultTimeout.
	Timeout time.Duration
	// ConnectTimeout bounds one TCP connect plus TLS handshake; 0 means
	// DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// TLS configures certificate checks for https; nil means the system defaults.
	TLS *tls.Config
	// DialContext replaces the network dialer; nil means net.Dialer. Proxies from
	// HTTPS_PROXY/NO_PROXY are honoured either way.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Proxy picks the HTTP(S) proxy for a request; nil is http.ProxyFromEnvironment.
	Proxy func(*http.Request) (*url.URL, error)
	// AllowedHosts are exact host names a redirect or token realm may name although
	// regcache cannot resolve them itself (only the HTTP(S) proxy can); see refuseTarget.
	AllowedHosts []string
	// Resolver looks up host names for the dial guard (guard.go); nil is net.DefaultResolver.
	Resolver Resolver
	// UserAgent is sent on every request.
	UserAgent string
	// RateLimitHold is how long a 429 that names no usable Retry-After holds requests back
	// (see ratelimit.go); 0 means DefaultRateLimitHold.
	RateLimitHold time.Duration
	// Observer, when set, is told of every exchange with the upstream.
	Observer Observer
	// MaxConcurrent bounds the exchanges open at once (slots.go); 0 means
	// DefaultMaxConcurrent.
	MaxConcurrent int
	// FailuresToOpen is how many operations failing in a row open the breaker (breaker.go);
	// 0 leaves it off (the configuration gives DefaultFailuresToOpen). Its backoff starts at
	// ErrorBackoff and doubles up to BackoffCap (the upstream's tag TTL; MaxErrorBackoff at
	// most), both taken as they are: 0 is no wait between probes.
	FailuresToOpen           int
	ErrorBackoff, BackoffCap time.Duration
}

// Registry is one upstream registry. It is safe for concurrent use.
type Registry struct {
	name      string
	base      *url.URL
	username  string
	password  string
	timeout   time.Duration
	userAgent string
	client    *http.Client
	observer  Observer
	auth      authState
	creds     credentialState
	failed    failures
	rl        rateGuard
	slots     slots
	brk       *breaker // nil: off
	// proxy is Options.Proxy or the environment's; proxies holds the host:port (proxyKey)
	// of each proxy it has named, which guardDial dials as named: the operator chose them.
	proxy   func(*http.Request) (*url.URL, error)
	proxies sync.Map
	// resolver looks names up for the target policy (guard.go); allowed is AllowedHosts,
	// lower-cased.
	resolver Resolver
	allowed  map[string]bool
	// life ends at Close: work detached from any one caller (a shared token request)
	// stops there rather than running on after shutdown.
	life context.Context
	stop context.CancelFunc
}

// New builds a Registry from opts.
func New(opts Options) (*Registry, error) {
	base, err := url.Parse(strings.TrimSuffix(opts.URL, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("upstream %s: URL %q is not an http(s) base URL", opts.Name, opts.URL)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	var dial dialFunc = opts.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: opts.ConnectTimeout, KeepAlive: 30 * time.Second}).DialContext
	}
	var resolver Resolver = net.DefaultResolver
	if opts.Resolver != nil {
		resolver = opts.Resolver
	}
	transport := &http.Transport{
		DialContext:           dial,
		TLSClientConfig:       opts.TLS,
		TLSHandshakeTimeout:   opts.ConnectTimeout,
		ResponseHeaderTimeout: opts.Timeout,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   DefaultMaxConcurrent, // at the default bound, every exchange reuses one (slots.go)
		IdleConnTimeout:       90 * time.Second,
	}
	ua := opts.UserAgent
	if ua == "" {
		ua = "regcache"
	}
	r := &Registry{
		name:      opts.Name,
		base:      base,
		username:  opts.Username,
		password:  opts.Password,
		timeout:   opts.Timeout,
		userAgent: ua,
		observer:  opts.Observer,
		client: &http.Client{
			Transport: transport,
			// Redirects are followed by send, which knows about credentials and HEAD.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	r.rl.hold = opts.RateLimitHold
	r.slots = newSlots(opts.MaxConcurrent, opts.Timeout)
	if opts.FailuresToOpen > 0 {
		r.brk = newBreaker(opts.FailuresToOpen, opts.ErrorBackoff, opts.BackoffCap)
	}
	r.proxy = opts.Proxy
	if r.proxy == nil {
		r.proxy = http.ProxyFromEnvironment
	}
	transport.Proxy = r.proxyFor
	r.resolver = resolver
	r.allowed = map[string]bool{}
	for _, h := range opts.AllowedHosts {
		r.allowed[hostKey(h)] = true
	}
	r.life, r.stop = context.WithCancel(context.Background())
	transport.DialContext = r.guardDial(dial, resolver)
	return r, nil
}

// hostKey is host as names compare: lower case, without the trailing dot of an absolute
// name ("Auth.Example." is auth.example).
func hostKey(host string) string {
	return strings.ToLower(strings.TrimSuffix(host, "."))
}

// proxyFor is the transport's Proxy: r.proxy, remembering which proxies it named so that
// guardDial lets their connections through.
func (r *Registry) proxyFor(req *http.Request) (*url.URL, error) {
	u, err := r.proxy(req)
	if u != nil {
		port := u.Port()
		if port == "" {
			port = defaultProxyPorts[strings.ToLower(u.Scheme)]
		}
		r.proxies.Store(proxyKey(u.Hostname(), port), true)
	}
	return u, err
}

// defaultProxyPorts are the ports net/http dials for a proxy URL without one.
var defaultProxyPorts = map[string]string{"http": "80", "https": "443", "socks5": "1080", "socks5h": "1080"}

// proxyKey is how guardDial recognises a proxy's address: its host on its port only, so a
// redirect to the proxy's name on another port is checked like any target.
func proxyKey(host, port string) string {
	return net.JoinHostPort(hostKey(host), port)
}

// Name is the configured name of the upstream.
func (r *Registry) Name() string { return r.name }

// Timeout bounds one whole operation with this upstream (Options.Timeout).
func (r *Registry) Timeout() time.Duration { return r.timeout }

// Close ends detached work and releases idle connections.
func (r *Registry) Close() {
	if r.stop != nil {
		r.stop()
	}
	r.client.CloseIdleConnections()
}

// do sends method to /v2/<repo>/<path>, authorizing for pull on repo, and answers the
// first 401 by taking up its challenge and trying once more.
func (r *Registry) do(ctx context.Context, method, repo, path, accept string) (*http.Response, error) {
	return r.doWith(ctx, method, repo, path, func(req *http.Request) {
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
	})
}

// doWith is do with a hook that sets request headers (Accept, Range) on every attempt.
func (r *Registry) doWith(ctx context.Context, method, repo, path string, prepare func(*http.Request)) (*http.Response, error) {
	scope := "repository:" + repo + ":pull"
	target := r.base.String() + "/v2/" + repo + "/" + path
	for attempt := 0; ; attempt++ {
		// While upstream has asked us to wait, nothing goes out: no token, no request.
		if err := r.holdBack(method, path); err != nil {
			return nil, err
		}
		req, err := http.NewRequestWithContext(ctx, method, target, nil)
		if err != nil {
			return nil, r.invalid("building request: %v", err)
		}
		prepare(req)
		req.Header.Set("User-Agent", r.userAgent)
		if err := r.authorize(ctx, req, scope); err != nil {
			return nil, err
		}
		resp, err := r.send(req)
		if err != nil {
			return nil, err
		}
		r.observeRateLimit(method, path, resp)
		if resp.StatusCode != http.StatusUnauthorized || attempt > 0 {
			return resp, nil
		}
		c, ok := ParseChallenge(resp.Header.Values("WWW-Authenticate"))
		if !ok || (c.Scheme == "basic" && r.username == "") {
			return resp, nil // checkResponse turns it into Denied
		}
		drainClose(resp)
		r.auth.setChallenge(c)
		r.auth.dropToken(scope) // whatever we sent was refused
	}
}

// unavailable wraps a transport failure. Timeouts are marked so the proxy can answer 504.
func (r *Registry) unavailable(err error, what string) error {
	e := &Error{Kind: KindUnavailable, Upstream: r.name}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		e.Timeout = true
		e.Message = what + ": timed out"
		return e
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // the URL is in what already; keep the message short
	}
	e.Message = what + ": " + err.Error()
	return e
}

func drainClose(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
}
