package main

// The end-to-end tests' one way to start regcache: internal/harness serves it in process,
// wired by build exactly as the binary wires it (build is package main's, so the harness
// takes it from here).

import (
	"testing"

	"go.uber.org/zap"

	"regcache/configs"
	"regcache/internal/harness"
)

// startRegcache runs regcache from cfgYAML on 127.0.0.1 until the test ends, logging to
// rc.Logs.
func startRegcache(t testing.TB, cfgYAML string) *harness.Instance {
	t.Helper()
	return harness.Start(t, cfgYAML, wire, harness.Options{})
}

// startRegcacheWith is startRegcache with the test's options (a dialer, quiet logs).
func startRegcacheWith(t testing.TB, cfgYAML string, o harness.Options) *harness.Instance {
	t.Helper()
	return harness.Start(t, cfgYAML, wire, o)
}

// wire is build, for the harness.
func wire(cfg *configs.Config, log *zap.Logger, o harness.Options) (harness.Server, error) {
	return build(cfg, log, buildOptions{AccessLog: o.AccessLog(), Dial: o.Dial, Resolver: o.Resolver, Proxy: o.Proxy})
}
