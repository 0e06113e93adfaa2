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
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"regcache/cache"
	"regcache/configs"
	"regcache/proxy"
	"regcache/upstream"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "regcache:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("regcache", flag.ContinueOnError)
	configPath := fs.String("config", "", "config file (default: the embedded configs/regcache.yaml)")
	listen := fs.String("listen", "", "listen address, overrides the config's listen")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "json", "json or console")
	accessLog := fs.Bool("access-log", true, "log one line per request")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := configs.Load(*configPath)
	if err != nil {
		return err
	}
	if *listen != "" {
		cfg.Listen = *listen
	}
	log, err := newLogger(*logLevel, *logFormat)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()

	srv, err := build(cfg, log, buildOptions{AccessLog: *accessLog})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	log.Info("regcache listening", zap.String("listen", ln.Addr().String()), zap.Int("upstreams", len(cfg.Upstreams)),
		zap.String("default_upstream", cfg.DefaultUpstream))

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
	AccessLog bool
	// Dial replaces the upstream dialer (tests use it to prove no packet leaves loopback).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// build turns a validated config into a ready fasthttp server.
func build(cfg *configs.Config, log *zap.Logger, bo buildOptions) (server, error) {
	c, err := cache.New(cache.Config{
		MaxSize:        int64(cfg.Cache.MaxSize),
		MaxStale:       cfg.Cache.MaxStale.D(),
		NegativeTTL:    cfg.Cache.NegativeTTL.D(),
		RevalidateWait: cfg.Cache.RevalidateWait.D(),
		Logger:         log,
	})
	if err != nil {
		return nil, err
	}
	var ups []*proxy.Upstream
	for i := range cfg.Upstreams {
		u := &cfg.Upstreams[i]
		tlsCfg, err := tlsConfig(u)
		if err != nil {
			return nil, err
		}
		opts := upstream.Options{
			Name: u.Name, URL: u.URL, Timeout: u.Timeout.D(), ConnectTimeout: u.ConnectTimeout.D(),
			TLS: tlsCfg, UserAgent: "regcache/1", DialContext: bo.Dial,
		}
		if u.Credentials != nil {
			opts.Username, opts.Password = u.Credentials.Username, u.Credentials.Password.Reveal()
		}
		reg, err := upstream.New(opts)
		if err != nil {
			return nil, err
		}
		ups = append(ups, &proxy.Upstream{
			Name: u.Name, Aliases: u.Aliases, StrictAccept: u.StrictAccept, DockerHub: isDockerHub(u),
			Origin: &cache.Origin{Registry: reg, TagTTL: cfg.TagTTLFor(u)},
		})
	}
	p, err := proxy.New(proxy.Options{Upstreams: ups, Default: cfg.DefaultUpstream, Cache: c, Logger: log, AccessLog: bo.AccessLog})
	if err != nil {
		return nil, err
	}
	return p.Server(), nil
}

// isDockerHub: Docker Hub's one-segment names live under library/.
func isDockerHub(u *configs.Upstream) bool {
	for _, n := range append([]string{u.Name}, u.Aliases...) {
		if strings.EqualFold(n, "docker.io") {
			return true
		}
	}
	return false
}

func tlsConfig(u *configs.Upstream) (*tls.Config, error) {
	if u.TLS.CAFile == "" && !u.TLS.InsecureSkipVerify {
		return nil, nil
	}
	c := &tls.Config{InsecureSkipVerify: u.TLS.InsecureSkipVerify} //nolint:gosec // the operator asked for it
	if u.TLS.CAFile != "" {
		pem, err := os.ReadFile(u.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: tls.ca_file: %w", u.Name, err)
		}
		pool, _ := x509.SystemCertPool()
		if pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream %s: tls.ca_file %s holds no PEM certificate", u.Name, u.TLS.CAFile)
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
