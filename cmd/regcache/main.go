// Command regcache runs the caching registry-metadata proxy. It only wires the packages
// together: config, logger, upstreams, cache, proxy, and the signals that stop it.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	_ "net/http/pprof" // served only with -pprof
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/distribution/reference"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"regcache/cache"
	"regcache/configs"
	"regcache/internal/budget"
	"regcache/internal/certfile"
	"regcache/internal/feed"
	"regcache/internal/watch"
	"regcache/internal/webhook"
	"regcache/proxy"
	"regcache/upstream"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) // cli.go: the subcommands
}

// serve runs the server with the flags in args until SIGINT or SIGTERM (`regcache` and
// `regcache serve`).
func serve(args []string) error {
	fs := flag.NewFlagSet("regcache", flag.ContinueOnError)
	configPath := fs.String("config", "", "config file (default: the embedded configs/regcache.yaml)")
	listen := fs.String("listen", "", "listen address, overrides the config's listen")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "json", "json or console")
	accessLog := fs.Bool("access-log", true, "log one line per request")
	pprofAddr := fs.String("pprof", "", "serve Go's pprof on this address (e.g. 127.0.0.1:6060); off by default")
	fs.Usage = func() { fmt.Fprint(fs.Output(), usageText+"\nserver flags:\n"); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (the server takes flags only: regcache -h)", fs.Arg(0))
	}
	cfg, err := configs.Load(*configPath)
	if err != nil {
		return err
	}
	if *listen != "" {
		cfg.Listen = *listen
		if err := cfg.CheckListeners(); err != nil {
			return fmt.Errorf("-listen %s: %w", *listen, err)
		}
	}
	log, err := newLogger(*logLevel, *logFormat)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()

	if *pprofAddr != "" {
		go func() {
			// net/http/pprof registers on the default mux; nothing else is served there.
			log.Warn("pprof server stopped", zap.Error(http.ListenAndServe(*pprofAddr, nil)))
		}()
	}
	bo := buildOptions{LogFormat: *logFormat}
	if *accessLog && log.Core().Enabled(zapcore.InfoLevel) {
		// Request lines are info lines: below that level the access log is off, decided
		// here once, not per request. They go where zap writes (stderr).
		bo.AccessLog = os.Stderr
	}
	srv, err := build(cfg, log, bo)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	log.Info("regcache listening", zap.String("listen", ln.Addr().String()), zap.Int("upstreams", len(cfg.Upstreams)),
		zap.String("default_upstream", cfg.DefaultUpstream), zap.Bool("client_auth", cfg.Auth.Enabled()), zap.Bool("tls", cfg.TLS != nil))

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case err := <-errc:
		return err
	case s := <-sig:
		log.Info("shutting down", zap.String("signal", s.String()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.ShutdownWithContext(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// server is what build returns: something that serves and shuts down.
type server interface {
	Serve(net.Listener) error
	ShutdownWithContext(context.Context) error
}

// buildOptions are the wiring choices that are not configuration.
type buildOptions struct {
	// AccessLog, when set, receives one line per request, in LogFormat ("json" or
	// "console"), buffered and flushed at least once a second and at shutdown.
	AccessLog io.Writer
	LogFormat string
	// Dial replaces the upstream dialer (tests use it to prove no packet leaves loopback).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Resolver replaces DNS for the upstream dial guard (tests: no query leaves the host).
	Resolver upstream.Resolver
	// Proxy replaces the HTTP(S) proxy from the environment (tests: an in-process proxy).
	Proxy func(*http.Request) (*url.URL, error)
}

// app is a wired regcache: the proxy and its fasthttp server.
type app struct {
	proxy  *proxy.Proxy
	access *proxy.AccessLog // nil when off
	events *feed.Log
	// watches is nil without a watch: list.
	watches *watch.Watcher
	hooks   *webhook.Dispatcher
	fleet   *feed.Fleet // the fleet's change feed, with the shared tier; nil without
	groups  func()      // stops the hooks' consumer groups on the fleet's stream; nil without
	// budgets closes the budgets' Redis client (nil without the shared tier).
	budgets func()
	server  *fasthttp.Server
	cache   *cache.Cache
	// snapshots saves the cache to cache.snapshot's file; nil without one.
	snapshots *cache.Snapshots
	// upstreams are closed on shutdown: their idle keep-alive connections (and the
	// transport goroutines that read them) would otherwise outlive the server.
	upstreams []*upstream.Registry
	// metrics serves /metrics on metrics_listen (open since build); nil without one.
	metrics   *fasthttp.Server
	metricsLn net.Listener
	// tls, when set, makes Serve speak HTTPS on its listener (tls:).
	tls *tls.Config
	log *zap.Logger
}

// Serve marks the proxy ready and serves ln (and metrics_listen) until shut down.
func (a *app) Serve(ln net.Listener) error {
	if a.metrics != nil {
		go func() {
			if err := a.metrics.Serve(a.metricsLn); err != nil && !errors.Is(err, net.ErrClosed) {
				a.log.Error("metrics server stopped", zap.Error(err))
			}
		}()
	}
	if a.tls != nil {
		// Each connection's handshake runs on its own goroutine, on its first read; closing
		// the listener (the server's shutdown does) closes those that never began one.
		ln = certfile.NewListener(ln, a.tls)
	}
	a.proxy.SetReady(true)
	err := a.server.Serve(ln)
	if err != nil && a.access != nil {
		_ = a.access.Close() // the server failed: the lines of what it answered still go out
	}
	return err
}

// ShutdownWithContext stops taking requests (readyz turns 503 first), drains those in
// flight until ctx ends, stops metrics_listen, the webhooks (a delivery in flight has until
// ctx ends) and the cache, and closes upstream idle connections.
func (a *app) ShutdownWithContext(ctx context.Context) error {
	a.proxy.SetReady(false)
	a.events.Close() // the change feed's streams end, or the server would wait for them
	err := a.server.ShutdownWithContext(ctx)
	if a.metrics != nil {
		_ = a.metrics.ShutdownWithContext(ctx)
		_ = a.metricsLn.Close() // in case Serve never ran
	}
	if a.watches != nil {
		a.watches.Close(ctx) // before the cache: their looks write to it
	}
	if a.groups != nil {
		a.groups() // the fleet's stream hands the hooks no more
	}
	a.hooks.Close(ctx) // after the server and the watches: the events they found are queued
	if a.fleet != nil {
		// After the server, the watches and the hooks: the moves they found are published,
		// and the deliveries they finished acknowledged.
		a.fleet.Close()
	}
	a.snapshots.Stop() // the last save: after the server, the watches and the hooks wrote to it
	a.cache.Close()    // its refreshes end first: they take the budgets
	if a.budgets != nil {
		a.budgets()
	}
	for _, r := range a.upstreams {
		r.Close()
	}
	if a.access != nil {
		_ = a.access.Close() // after the server: every answered request's line is in
	}
	return err
}

// FlushLogs writes out the access log's buffered lines (for tests that read the log).
func (a *app) FlushLogs() {
	if a.access != nil {
		a.access.Flush()
	}
}

// build turns a validated config into a ready server.
func build(cfg *configs.Config, log *zap.Logger, bo buildOptions) (_ server, err error) {
	for _, w := range cfg.Warnings() {
		log.Warn(w)
	}
	serverTLS, err := listenTLS(cfg, log)
	if err != nil {
		return nil, err
	}
	metrics := proxy.NewMetrics()
	shared, err := redisConfig(cfg.Cache.Redis)
	if err != nil {
		return nil, err
	}
	events := feed.NewLog(cfg.Events.LogSize)
	var fleet *feed.Fleet
	if shared != nil {
		fleet = feed.NewFleet(events, *shared, log) // one change feed for the fleet
		defer func() {
			if err != nil {
				fleet.Close()
			}
		}()
	}
	c, err := cache.New(cache.Config{
		OnTagMove:      events.RecordMove,
		MaxSize:        int64(cfg.Cache.MaxSize),
		MaxStale:       cfg.Cache.MaxStale.D(),
		NegativeTTL:    cfg.Cache.NegativeTTL.D(),
		RevalidateWait: cfg.Cache.RevalidateWait.D(),
		ErrorBackoff:   cfg.Cache.ErrorBackoff.D(),
		MaxBlobSize:    int64(cfg.Cache.MaxBlobSize),
		TagsMaxPages:   cfg.Cache.TagsMaxPagesPerRequest,
		TagsMaxCount:   cfg.Cache.TagsMaxCount,
		TagsMaxBytes:   int(cfg.Cache.TagsMaxBytes),
		Logger:         log,
		Redis:          shared,
		Snapshots:      cfg.Cache.Snapshot != nil,
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	newBudget, closeBudgets := budgets(shared, log)
	defer func() {
		if err != nil && closeBudgets != nil {
			closeBudgets()
		}
	}()
	var ups []*proxy.Upstream
	var regs []*upstream.Registry
	for i := range cfg.Upstreams {
		u := &cfg.Upstreams[i]
		tlsCfg, err := tlsConfig(u)
		if err != nil {
			return nil, err
		}
		opts := upstream.Options{
			Name: u.Name, URL: u.URL, Timeout: u.Timeout.D(), ConnectTimeout: u.ConnectTimeout.D(),
			TLS: tlsCfg, UserAgent: "regcache/1", DialContext: bo.Dial, Resolver: bo.Resolver, Observer: metrics,
			Proxy: bo.Proxy, AllowedHosts: u.AllowedHosts, MaxConcurrent: u.MaxConcurrent,
			// The breaker's backoff starts where a tag's does and is capped at the upstream's
			// tag TTL, as a tag's is at its own.
			FailuresToOpen: u.FailuresToOpen, ErrorBackoff: cfg.Cache.ErrorBackoff.D(), BackoffCap: cfg.TagTTLFor(u),
		}
		if u.Credentials != nil {
			opts.Username, opts.Password = u.Credentials.Username, u.Credentials.Password.Reveal()
		}
		reg, err := upstream.New(opts)
		if err != nil {
			return nil, err
		}
		regs = append(regs, reg)
		ups = append(ups, &proxy.Upstream{
			Name: u.Name, Aliases: u.Aliases, StrictAccept: u.StrictAccept, DockerHub: u.IsDockerHub(),
			Origin: &cache.Origin{Registry: reg, TagTTL: cfg.TagTTLFor(u), Rules: cfg.TTLRulesFor(u), Budget: newBudget(u, reg)},
		})
	}
	auth, err := clientAuth(cfg)
	if err != nil {
		return nil, err
	}
	var access *proxy.AccessLog
	if bo.AccessLog != nil {
		access = proxy.NewAccessLog(bo.AccessLog, bo.LogFormat)
	}
	p, err := proxy.New(proxy.Options{Upstreams: ups, Default: cfg.DefaultUpstream, Cache: c, Logger: log,
		AccessLog: access, Events: events, Auth: auth, Metrics: metrics, Limits: limits(&cfg.Server)})
	if err != nil {
		return nil, err
	}
	metrics.WatchCache(c)
	metrics.WatchUpstreams(ups)
	metrics.WatchBudgets(ups)
	metrics.WatchEvents(events)
	wopts, err := watches(cfg, p)
	if err != nil {
		return nil, err
	}
	hooks, err := webhooks(cfg, log, bo)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			hooks.Close(context.Background())
		}
	}()
	a := &app{proxy: p, server: p.Server(), cache: c, upstreams: regs, log: log, access: access, events: events, hooks: hooks,
		budgets: closeBudgets, tls: serverTLS}
	metrics.WatchWebhooks(hooks)
	if cfg.MetricsListen != "" {
		// Opened here, so that a taken port fails the start rather than a goroutine later.
		if a.metricsLn, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			return nil, fmt.Errorf("metrics_listen %s: %w", cfg.MetricsListen, err)
		}
		a.metrics = p.MetricsServer()
		log.Info("metrics listening", zap.String("listen", a.metricsLn.Addr().String()))
	}
	// Started last: nothing after them may fail, or they would run on against a closed
	// cache and fleet.
	a.fleet = fleet
	a.snapshots = warmStart(cfg, c, ups, log) // before Serve: the first request finds what it loaded
	switch {
	case len(hooks.Hooks()) == 0:
	case fleet != nil:
		// Each hook reads the fleet's stream through its own consumer group: every event
		// is delivered once for the fleet, by whichever replica Redis hands it to.
		a.groups = deliverFromFleet(fleet, hooks)
	default:
		events.Notify(hooks.Deliver)
	}
	if len(cfg.Watch) > 0 {
		wopts.Cache, wopts.Publish, wopts.Logger = c, func(e feed.Event) { events.Publish(e) }, log
		a.watches = watch.Start(wopts)
		metrics.WatchWatches(a.watches)
	}
	return a, nil
}

// budgets makes each upstream's budget for background work; with the shared tier they
// keep the fleet's logs in Redis, through one client that closeAll closes (nil without).
func budgets(shared *cache.RedisConfig, log *zap.Logger) (newBudget func(*configs.Upstream, *upstream.Registry) *budget.Budget, closeAll func()) {
	base := budget.Config{Logger: log}
	if shared != nil {
		rc := shared.WithDefaults()
		rdb := cache.NewRedisClient(rc)
		base.Redis, base.Prefix, base.OpTimeout = rdb, rc.KeyPrefix, rc.OpTimeout
		closeAll = func() { _ = rdb.Close() }
	}
	return func(u *configs.Upstream, reg *upstream.Registry) *budget.Budget {
		bc := base
		bc.Upstream, bc.Requests, bc.Per, bc.Share = u.Name, u.Budget.Requests, u.Budget.Per.D(), int(u.BudgetShare)
		// A request may wait for a connection slot, then take its whole timeout.
		bc.RateLimit, bc.InFlight = reg.RateLimit, 2*reg.Timeout()
		return budget.New(bc)
	}, closeAll
}

// groupMinIdle is how long a delivery handed to a replica may go unacknowledged and
// unrenewed (the replica died) before another replica takes it over.
const groupMinIdle = 30 * time.Second

// deliverFromFleet runs each hook's consumer group on the fleet's stream until the
// returned stop is called.
func deliverFromFleet(fleet *feed.Fleet, hooks *webhook.Dispatcher) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, h := range hooks.Hooks() {
		g := fleet.Group("webhook:"+h.Name(), groupMinIdle)
		h.CountDropped(g.Dropped)
		wg.Go(func() { g.Run(ctx, h.Room, h.Offer) })
	}
	return func() { cancel(); wg.Wait() }
}

// watches resolves the watch: entries to upstreams, as the digest API resolves images.
func watches(cfg *configs.Config, p *proxy.Proxy) (watch.Options, error) {
	var opts watch.Options
	for i := range cfg.Watch {
		w := &cfg.Watch[i]
		named, tags, err := w.Named()
		if err == nil {
			var up *proxy.Upstream
			var repo string
			if up, repo, err = p.Resolve(named); err == nil {
				if tags != nil {
					opts.Repos = append(opts.Repos, watch.Repo{Upstream: up.Name, Origin: up.Origin, Repository: repo, Tags: tags})
				} else {
					opts.Tags = append(opts.Tags, watch.Tag{Upstream: up.Name, Origin: up.Origin, Repository: repo,
						Tag: named.(reference.Tagged).Tag()})
				}
				continue
			}
		}
		return opts, fmt.Errorf("watch[%d]: %w", i, err) // configs validated it: not expected
	}
	return opts, nil
}

// webhooks starts a sender for each of events.webhooks (none without them).
func webhooks(cfg *configs.Config, log *zap.Logger, bo buildOptions) (*webhook.Dispatcher, error) {
	hub := map[string]bool{}
	for i := range cfg.Upstreams {
		hub[cfg.Upstreams[i].Name] = cfg.Upstreams[i].IsDockerHub()
	}
	var hooks []webhook.Config
	for _, w := range cfg.Events.Webhooks {
		h := webhook.Config{
			Name: w.Name, URL: w.URL, Format: w.Format, Secret: w.Secret.Reveal(),
			Filter:  feed.Filter{Images: w.Filter.Images, Registries: w.Filter.Registries, Types: w.Filter.Types},
			Timeout: w.Timeout.D(), MaxRetries: w.MaxRetries, QueueSize: w.QueueSize,
		}
		if len(w.Headers) > 0 {
			h.Headers = make(map[string]string, len(w.Headers))
			for k, v := range w.Headers {
				h.Headers[k] = v.Reveal()
			}
		}
		hooks = append(hooks, h)
	}
	// The CloudEvents source: public_url, or urn:regcache:<hostname> without one (New's).
	return webhook.New(hooks, webhook.Options{
		Source: strings.TrimSuffix(cfg.PublicURL, "/"), DockerHub: func(r string) bool { return hub[r] },
		Logger: log, DialContext: bo.Dial,
	})
}

// limits carries the server: block to the proxy.
func limits(s *configs.Server) proxy.Limits {
	return proxy.Limits{
		ReadTimeout: s.ReadTimeout.D(), WriteTimeout: s.WriteTimeout.D(), IdleTimeout: s.IdleTimeout.D(),
		MaxHeaderSize: int(s.MaxHeaderSize), MaxConnsPerIP: s.MaxConnsPerIP, Concurrency: s.Concurrency,
		MaxRequestBody: int(s.MaxRequestBody),
	}
}

// clientAuth builds client-facing auth from public_url, trust_forwarded_headers and auth:.
func clientAuth(cfg *configs.Config) (*proxy.ClientAuth, error) {
	opts := proxy.ClientAuthOptions{
		Secret:                []byte(cfg.Auth.Secret.Reveal()),
		TokenTTL:              cfg.Auth.TokenTTL.D(),
		PublicURL:             cfg.PublicURL,
		TrustForwardedHeaders: cfg.TrustForwardedHeaders,
	}
	if cfg.Auth.Htpasswd != "" {
		users, err := configs.ReadHtpasswd(cfg.Auth.Htpasswd)
		if err != nil {
			return nil, fmt.Errorf("auth.htpasswd: %w", err)
		}
		opts.Users = users
	}
	for _, t := range cfg.Auth.Tokens {
		opts.Tokens = append(opts.Tokens, t.Reveal())
	}
	return proxy.NewClientAuth(opts)
}

// redisConfig carries cache.redis to the cache; nil without a shared tier.
func redisConfig(r *configs.Redis) (*cache.RedisConfig, error) {
	if r == nil {
		return nil, nil
	}
	rc := &cache.RedisConfig{Addr: r.Addr, Username: r.Username, Password: r.Password.Reveal(), DB: r.DB, KeyPrefix: r.KeyPrefix, OpTimeout: r.Timeout.D()}
	if r.TLS.On() {
		host, _, _ := net.SplitHostPort(r.Addr)
		rc.TLS = &tls.Config{ServerName: host, InsecureSkipVerify: r.TLS.InsecureSkipVerify, MinVersion: tls.VersionTLS12} //nolint:gosec // the operator asked for it
		if r.TLS.ServerName != "" {
			rc.TLS.ServerName = r.TLS.ServerName
		}
		if r.TLS.CAFile != "" {
			pool, err := certPool(r.TLS.CAFile)
			if err != nil {
				return nil, fmt.Errorf("cache.redis.tls.ca_file: %w", err)
			}
			rc.TLS.RootCAs = pool
		}
	}
	return rc, nil
}

// certPool is the system's roots plus the PEM certificates in file.
func certPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool, _ := x509.SystemCertPool()
	if pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

func tlsConfig(u *configs.Upstream) (*tls.Config, error) {
	if u.TLS.CAFile == "" && !u.TLS.InsecureSkipVerify {
		return nil, nil
	}
	c := &tls.Config{InsecureSkipVerify: u.TLS.InsecureSkipVerify} //nolint:gosec // the operator asked for it
	if u.TLS.CAFile != "" {
		pool, err := certPool(u.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: tls.ca_file: %w", u.Name, err)
		}
		c.RootCAs = pool
	}
	return c, nil
}

func newLogger(level, format string) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level: %q is not debug, info, warn or error", level)
	}
	var zc zap.Config
	switch format {
	case "json":
		zc = zap.NewProductionConfig()
		zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	case "console":
		zc = zap.NewDevelopmentConfig()
	default:
		return nil, fmt.Errorf("-log-format: %q is not json or console", format)
	}
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Sampling = nil // one line per request means one line per request
	zc.DisableStacktrace = true
	return zc.Build()
}
