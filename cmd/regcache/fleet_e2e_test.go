package main

// Replicas sharing a Redis tier (docs/replicas.md): a fleet asks upstream once per tag, a
// restarted replica warms from Redis, Redis killed or unreachable costs no client request,
// and the tier works over TLS with a password, whose failures show on /readyz without
// any secret.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"regcache/cache/redistest"
	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// startReplica starts a replica without the access log (a burst would fill memory with it).
func startReplica(t *testing.T, cfgYAML string) *harness.Instance {
	t.Helper()
	return startRegcacheWith(t, cfgYAML, harness.Options{NoAccessLog: true})
}

// fleetConfig is a replica's config: one upstream, and the shared tier when redisAddr is
// set.
func fleetConfig(upURL, redisAddr string) string {
	extra := "  tag_ttl: 10m\n"
	if redisAddr != "" {
		// A generous timeout: under -race on a loaded two-core machine a loopback call can
		// stall past the 250ms default, and each such miss asks upstream (TestSharedTierDown
		// covers what a slow Redis costs).
		extra += "  redis:\n    addr: " + redisAddr + "\n    timeout: 2s\n"
	}
	return harness.Config(extra, harness.Upstream("reg.test", upURL))
}

// burst sends n clients at once, spread over the replicas and over tags, and checks every
// answer against what was pushed. It returns the failures.
func burst(reps []*harness.Instance, method string, tags []string, want map[string]registrytest.Pushed, n int) []string {
	path := func(i int) string { return "/v2/reg.test/team/app/manifests/" + tags[i%len(tags)] }
	var failures []string
	for i, r := range harness.Burst(reps, n, method, path, "Accept", harness.AcceptAll) {
		tag := tags[i%len(tags)]
		fail := func(format string, a ...any) {
			failures = append(failures, fmt.Sprintf("client %d %s %s: ", i, method, tag)+fmt.Sprintf(format, a...))
		}
		if r.Err != nil && r.Status == 0 {
			fail("%v", r.Err)
			continue
		}
		if r.Err != nil || r.Status != 200 {
			fail("status %d, %v: %.200s", r.Status, r.Err, r.Body)
			continue
		}
		w := want[tag]
		if got := r.Header.Get("Docker-Content-Digest"); got != w.Digest {
			fail("digest %s, want %s", got, w.Digest)
		}
		if method == http.MethodGet && digest.FromBytes(r.Body).String() != w.Digest {
			fail("body does not match %s", w.Digest)
		}
	}
	return failures
}

func pushTags(t *testing.T, reg *registrytest.Registry, prefix string, n int) ([]string, map[string]registrytest.Pushed) {
	var tags []string
	want := map[string]registrytest.Pushed{}
	for i := range n {
		tag := fmt.Sprintf("%s%d", prefix, i)
		switch i % 3 {
		case 0:
			want[tag] = reg.PushImage(t, "team/app", tag, types.OCIManifestSchema1)
		case 1:
			want[tag] = reg.PushImage(t, "team/app", tag, types.DockerManifestSchema2)
		default:
			want[tag] = reg.PushIndex(t, "team/app", tag, types.OCIImageIndex, "linux/amd64", "linux/arm64")
		}
		tags = append(tags, tag)
	}
	return tags, want
}

func manifestRequests(reg *registrytest.Registry) int {
	return reg.Count(http.MethodGet, "manifest") + reg.Count(http.MethodHead, "manifest")
}

// TestFleetSharedTier is issue 6's proof: three replicas, one Redis, one upstream.
//   - A cold burst of 300 clients for 20 tags costs 20 upstream manifest requests (without
//     the shared tier, the same burst costs each replica its own).
//   - A replica restarted with an empty memory warms from Redis without asking upstream.
//   - Redis killed in the middle of a burst loses no client request; /readyz and /metrics
//     show it down, and the fleet uses it again by itself once it is back.
func TestFleetSharedTier(t *testing.T) {
	if redistest.Binary() == "" {
		redistest.Skip(t)
	}

	t0 := time.Now()
	phase := func(name string) { t.Logf("%6.2fs %s", time.Since(t0).Seconds(), name) }
	// The baseline: the same fleet without Redis.
	solo := registrytest.New(t, registrytest.Bearer)
	soloTags, soloWant := pushTags(t, solo, "v", 20)
	var soloReps []*harness.Instance
	for range 3 {
		soloReps = append(soloReps, startReplica(t, fleetConfig(solo.URL, "")))
	}
	if f := burst(soloReps, http.MethodGet, soloTags, soloWant, 300); len(f) > 0 {
		t.Fatalf("baseline burst: %d failures, first: %s", len(f), f[0])
	}
	without := manifestRequests(solo)

	phase("baseline done")
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.Bearer)
	tags, want := pushTags(t, reg, "v", 20)
	cfg := fleetConfig(reg.URL, rs.Addr)
	reps := []*harness.Instance{startReplica(t, cfg), startReplica(t, cfg), startReplica(t, cfg)}
	phase("pushed, replicas up")

	if f := burst(reps, http.MethodGet, tags, want, 300); len(f) > 0 {
		t.Fatalf("cold burst: %d failures, first: %s", len(f), f[0])
	}
	with := manifestRequests(reg)
	t.Logf("cold GET burst, 300 clients, 3 replicas, 20 tags: %d upstream manifest requests with the shared tier, %d without (plus %d /v2/ pings and %d token requests with it)",
		with, without, reg.Count(http.MethodGet, "base"), reg.Count(http.MethodGet, "token"))
	if with != 20 {
		for i, rp := range reps {
			m := rp.Metrics(t)
			t.Logf("replica %d: redis up %v errors %v hits %v misses %v lock waits %v; %s", i, m["regcache_redis_up"], m["regcache_redis_errors_total"],
				m["regcache_redis_hits_total"], m["regcache_redis_misses_total"], m["regcache_fleet_lock_waits_total"], grepLines(rp.Logs.String(), "redis"))
		}
		t.Fatalf("cold burst with the shared tier: %d upstream manifest requests, want 20 (one per tag)", with)
	}
	if without <= with {
		t.Fatalf("baseline without Redis made %d requests: the comparison shows nothing", without)
	}

	phase("cold burst done")
	// HEAD, as update checkers ask: 20 more tags, 20 more requests, all of them HEADs.
	headTags, headWant := pushTags(t, reg, "h", 20)
	reg.ResetCounts()
	if f := burst(reps, http.MethodHead, headTags, headWant, 300); len(f) > 0 {
		t.Fatalf("HEAD burst: %d failures, first: %s", len(f), f[0])
	}
	if n, gets := manifestRequests(reg), reg.Count(http.MethodGet, "manifest"); n != 20 || gets != 0 {
		t.Fatalf("cold HEAD burst: %d upstream manifest requests (%d GETs), want 20 HEADs", n, gets)
	}

	phase("head burst done")
	// Tags lists: 60 clients over the 3 replicas, one upstream tags request.
	reg.ResetCounts()
	tagsList := func(int) string { return "/v2/reg.test/team/app/tags/list" }
	for _, r := range harness.Burst(reps, 60, http.MethodGet, tagsList) {
		if r.Err != nil || r.Status != 200 || !strings.Contains(string(r.Body), `"h19"`) {
			t.Fatalf("tags list: %d %v %.100s", r.Status, r.Err, r.Body)
		}
	}
	if n := reg.Count(http.MethodGet, "tags"); n != 1 {
		t.Fatalf("60 tags-list clients over 3 replicas: %d upstream tags requests, want 1", n)
	}
	phase("tags lists done")

	// A replica restarted with empty memory warms from Redis: not one upstream request.
	reps[0].Stop(t)
	reps[0] = startReplica(t, cfg)
	reg.ResetCounts()
	if f := burst(reps[:1], http.MethodGet, tags, want, 60); len(f) > 0 {
		t.Fatalf("restarted replica: %d failures, first: %s", len(f), f[0])
	}
	if f := burst(reps[:1], http.MethodHead, headTags, headWant, 60); len(f) > 0 {
		t.Fatalf("restarted replica, HEAD: %d failures, first: %s", len(f), f[0])
	}
	if r := reps[0].Do(t, http.MethodGet, "/v2/reg.test/team/app/tags/list"); r.Status != 200 {
		t.Fatalf("restarted replica, tags list: %d", r.Status)
	}
	if n := reg.Total(); n != 0 {
		t.Logf("logs: %s", grepLines(reps[0].Logs.String(), "redis"))
		t.Fatalf("the restarted replica made %d upstream requests (pings and tokens included), want 0: it should warm from Redis (GET manifest %d, HEAD manifest %d, base %d, token %d)", n, reg.Count(http.MethodGet, "manifest"), reg.Count(http.MethodHead, "manifest"), reg.Count(http.MethodGet, "base"), reg.Count(http.MethodGet, "token"))
	}

	phase("restart done")
	// Redis dies in the middle of a burst of misses: every client is still answered. The
	// upstream answers after 150 ms, so when Redis dies 60 ms in, every replica has
	// fetches in flight, holders and waiters both.
	killTags, killWant := pushTags(t, reg, "k", 20)
	reg.SetFault(registrytest.OnManifests(registrytest.Delay(150 * time.Millisecond)))
	go func() {
		time.Sleep(60 * time.Millisecond)
		rs.Kill()
	}()
	if f := burst(reps, http.MethodGet, killTags, killWant, 300); len(f) > 0 {
		t.Fatalf("with Redis killed mid-burst: %d of 300 requests failed, first: %s", len(f), f[0])
	}
	reg.SetFault(nil)
	for i, rp := range reps {
		r := rp.Do(t, http.MethodGet, "/readyz")
		if r.Status != 200 || !strings.Contains(string(r.Body), "redis: down") {
			t.Fatalf("replica %d /readyz with Redis dead: %d %q; want 200 with the detail", i, r.Status, r.Body)
		}
		if m := rp.Metrics(t); m["regcache_redis_up"] != 0 || m["regcache_redis_errors_total"] == 0 {
			t.Fatalf("replica %d metrics with Redis dead: up %v, errors %v", i, m["regcache_redis_up"], m["regcache_redis_errors_total"])
		}
	}
	if logs := reps[1].Logs.String(); strings.Count(logs, "redis failing") != 1 {
		t.Fatalf("replica 1 logged the Redis failure %d times, want once per interval", strings.Count(logs, "redis failing"))
	}

	phase("kill phase done")
	// Redis comes back (empty): the fleet notices by itself and shares again.
	rs.Start()
	deadline := time.Now().Add(15 * time.Second)
	for _, rp := range reps {
		for !strings.Contains(string(rp.Do(t, http.MethodGet, "/readyz").Body), "redis: up") {
			if time.Now().After(deadline) {
				t.Fatal("Redis is back but a replica still shows it down after 15s")
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	phase("redis back seen")
	backTags, backWant := pushTags(t, reg, "b", 5)
	reg.ResetCounts()
	if f := burst(reps, http.MethodGet, backTags, backWant, 60); len(f) > 0 {
		t.Fatalf("after Redis came back: %d failures, first: %s", len(f), f[0])
	}
	if n := manifestRequests(reg); n != 5 {
		for i, rp := range reps {
			m := rp.Metrics(t)
			t.Logf("replica %d: redis up %v errors %v hits %v misses %v lock waits %v; %s", i, m["regcache_redis_up"], m["regcache_redis_errors_total"],
				m["regcache_redis_hits_total"], m["regcache_redis_misses_total"], m["regcache_fleet_lock_waits_total"], grepLines(rp.Logs.String(), "redis"))
		}
		t.Fatalf("after Redis came back: %d upstream manifest requests for 5 tags, want 5", n)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// selfSigned writes a certificate for 127.0.0.1 and its key, PEM, into dir.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "redis.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "redis.pem"), filepath.Join(dir, "redis.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestSharedTierPasswordAndTLS: the shared tier over TLS (a private CA) with a password
// works across replicas; a wrong password or an unverifiable certificate leaves a replica
// serving from memory and upstream, with the reason on /readyz, and no password anywhere
// in its logs, /readyz or /metrics.
func TestSharedTierPasswordAndTLS(t *testing.T) {
	if redistest.Binary() == "" {
		redistest.Skip(t)
	}
	certFile, keyFile := selfSigned(t, t.TempDir())
	pool := x509.NewCertPool()
	pemData, _ := os.ReadFile(certFile)
	pool.AppendCertsFromPEM(pemData)
	const password = "p@ss: w0rd#with-Secret-bits"
	rs := redistest.StartTLS(t, certFile, keyFile, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, "--requirepass", password)
	t.Setenv("TEST_REDIS_PASSWORD", password)
	t.Setenv("TEST_REDIS_WRONG", "not-the-Secret-xyz")

	reg := registrytest.New(t, registrytest.NoAuth)
	tags, want := pushTags(t, reg, "v", 3)
	redisYAML := func(lines string) string {
		return harness.Config("  tag_ttl: 10m\n  redis:\n    addr: "+rs.Addr+"\n    timeout: 2s\n"+lines, harness.Upstream("reg.test", reg.URL))
	}
	good := redisYAML("    password: ${TEST_REDIS_PASSWORD}\n    tls:\n      ca_file: " + certFile + "\n")
	a, b := startReplica(t, good), startReplica(t, good)
	if f := burst([]*harness.Instance{a}, http.MethodGet, tags, want, 3); len(f) > 0 {
		t.Fatal(f[0])
	}
	before := manifestRequests(reg)
	if f := burst([]*harness.Instance{b}, http.MethodGet, tags, want, 3); len(f) > 0 {
		t.Fatal(f[0])
	}
	if n := manifestRequests(reg); n != before || before != 3 {
		t.Fatalf("over TLS with a password, replica b made %d upstream requests after a's %d; want 0 more", n-before, before)
	}
	if r := b.Do(t, http.MethodGet, "/readyz"); !strings.Contains(string(r.Body), "redis: up") {
		t.Fatalf("/readyz: %s", r.Body)
	}

	for name, tc := range map[string]struct{ lines, reason string }{
		"wrong password":        {"    password: ${TEST_REDIS_WRONG}\n    tls:\n      ca_file: " + certFile + "\n", "authentication failed"},
		"no password":           {"    tls:\n      ca_file: " + certFile + "\n", "authentication failed"},
		"certificate not known": {"    password: ${TEST_REDIS_PASSWORD}\n    tls: true\n", "TLS handshake failed"},
		"plain text to TLS":     {"    password: ${TEST_REDIS_PASSWORD}\n", "connection lost"},
	} {
		t.Run(name, func(t *testing.T) {
			lines := tc.lines
			rp := startReplica(t, redisYAML(lines))
			if f := burst([]*harness.Instance{rp}, http.MethodGet, tags, want, 6); len(f) > 0 {
				t.Fatalf("a replica that cannot use Redis must still serve: %s", f[0])
			}
			deadline := time.Now().Add(10 * time.Second)
			var ready string
			for !strings.Contains(ready, "redis: down") {
				if time.Now().After(deadline) {
					t.Fatalf("/readyz still says %q", ready)
				}
				ready = string(rp.Do(t, http.MethodGet, "/readyz").Body)
				time.Sleep(50 * time.Millisecond)
			}
			// /readyz is on the clients' port: a category, not the peer's address or bytes.
			if !strings.Contains(ready, "("+tc.reason+")") || strings.Contains(ready, "127.0.0.1") {
				t.Fatalf("/readyz %q, want the reason %q and no address", ready, tc.reason)
			}
			if !strings.Contains(rp.Logs.String(), "redis failing") {
				t.Fatal("the failure is not in the log")
			}
			metrics := string(rp.Do(t, http.MethodGet, "/metrics").Body)
			for _, secret := range []string{password, "not-the-Secret-xyz", "Secret"} {
				for what, text := range map[string]string{"logs": rp.Logs.String(), "/readyz": ready, "/metrics": metrics} {
					if strings.Contains(text, secret) {
						t.Fatalf("%s shows %q", what, secret)
					}
				}
			}
			t.Logf("/readyz: %s", strings.TrimSpace(ready))
		})
	}
}
