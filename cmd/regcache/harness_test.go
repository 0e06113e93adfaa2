package main

// The end-to-end tests' one way to start regcache: internal/harness serves it in process,
// wired by build exactly as the binary wires it (build is package main's, so the harness
// takes it from here).

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"go.uber.org/zap"

	"regcache/configs"
	"regcache/internal/harness"
	"regcache/upstream/registrytest"
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
	return build(cfg, log, buildOptions{AccessLog: o.AccessLogTo, LogFormat: "json", Dial: o.Dial, Resolver: o.Resolver, Proxy: o.Proxy})
}

// startForAbuse starts a registry holding team/app:v1 and, in front of it, a quiet regcache
// (a log kept in memory would grow with every abusive request) with serverLines in its
// server: block. normal is the path an ordinary client asks meanwhile.
func startForAbuse(t testing.TB, serverLines ...string) (reg *registrytest.Registry, rc *harness.Instance, normal string) {
	t.Helper()
	reg = registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	cfg := harness.Config("", harness.Upstream("reg.test", reg.URL))
	if len(serverLines) > 0 {
		cfg += harness.Block("server", serverLines...)
	}
	return reg, startRegcacheWith(t, cfg, harness.Options{Quiet: true}), "/v2/team/app/manifests/v1"
}
