package main

// Secrets never show: no upstream credential or token in regcache's logs or answers, and
// no client credential sent upstream.

import (
	"encoding/base64"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// TestSecretsNeverShow drives regcache through successes, upstream failures, bad input,
// the digest API, metrics and the token endpoint, with debug logging, and then searches
// everything it wrote and answered for the upstream credentials and the tokens upstream
// issued. It also checks that a client's own Authorization never reaches upstream.
func TestSecretsNeverShow(t *testing.T) {
	reg := registrytest.New(t, registrytest.BearerBasic)
	basic := registrytest.New(t, registrytest.Basic)
	reg.PushIndex(t, "team/app", "v1", types.OCIImageIndex, "linux/amd64", "linux/arm64")
	basic.PushImage(t, "team/app", "v1", types.DockerManifestSchema2)
	t.Setenv("REGCACHE_TEST_PASSWORD", reg.Password)
	t.Setenv("REGCACHE_TEST_BASIC_PASSWORD", basic.Password)
	rc := startRegcache(t, harness.Config("  tag_ttl: 50ms\n  negative_ttl: 1ms\n",
		harness.Upstream("ghcr.io", reg.URL, "credentials:", "  username: robot", "  password: ${REGCACHE_TEST_PASSWORD}", "timeout: 2s"),
		harness.Upstream("quay.io", basic.URL, "credentials:", "  username: robot", "  password: ${REGCACHE_TEST_BASIC_PASSWORD}", "timeout: 2s")))

	clientSecrets := []string{"client-bearer-7f3a9c", base64.StdEncoding.EncodeToString([]byte("alice:client-pass-51ee"))}
	var answers harness.Transcript
	paths := []string{
		"/v2/", "/token?service=regcache&scope=repository:team/app:pull",
		"/v2/ghcr.io/team/app/manifests/v1", "/v2/ghcr.io/team/app/tags/list",
		"/v2/quay.io/team/app/manifests/v1", "/v2/ghcr.io/team/missing/manifests/v1",
		"/v2/ghcr.io/TEAM/app/manifests/v1", "/v2/nope.example/x/manifests/v1",
		"/api/v1/digest?image=ghcr.io/team/app:v1&platform=linux/arm64",
		"/api/v1/digest?image=quay.io/team/app:v1", "/api/v1/digest?image=ghcr.io/team/app:nope",
		"/metrics", "/readyz",
	}
	for _, p := range paths {
		answers.Add(rc.Do(t, http.MethodGet, p, "Authorization", "Bearer "+clientSecrets[0]))
		answers.Add(rc.Do(t, http.MethodHead, p, "Authorization", "Basic "+clientSecrets[1]))
	}
	// Upstream failures and recoveries: errors are built from upstream's words.
	time.Sleep(60 * time.Millisecond)
	for _, f := range []registrytest.Fault{registrytest.Status(500), registrytest.CloseConnection(), registrytest.RateLimited(time.Second)} {
		reg.SetFault(f)
		basic.SetFault(f)
		answers.Add(rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/manifests/v2"))
		answers.Add(rc.Do(t, http.MethodGet, "/v2/quay.io/team/app/manifests/v2"))
	}
	reg.SetFault(nil)
	basic.SetFault(nil)
	// A batch answer too.
	resp, err := rc.Client.Post(rc.URL+"/api/v1/digests", "application/json",
		strings.NewReader(`{"images":["ghcr.io/team/app:v1","quay.io/team/app:v1","ghcr.io/team/x:1"]}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	answers.Add(harness.Response{Status: resp.StatusCode, Header: resp.Header, Body: b})

	secrets := map[string]string{
		"token-endpoint password": reg.Password,
		"basic password":          basic.Password,
		"basic header":            base64.StdEncoding.EncodeToString([]byte("robot:" + basic.Password)),
		"token-endpoint header":   base64.StdEncoding.EncodeToString([]byte("robot:" + reg.Password)),
	}
	for i, tok := range reg.IssuedTokens() {
		secrets["upstream token "+string(rune('a'+i))] = tok
	}
	for _, p := range []string{"/v2/quay.io/team/app/manifests/v1", "/v2/ghcr.io/team/app/manifests/v1"} {
		if r := rc.Do(t, http.MethodGet, p); r.Status != 200 {
			t.Fatalf("%s: %d: the credentials did not work, so the test proves nothing", p, r.Status)
		}
	}
	if len(reg.IssuedTokens()) == 0 {
		t.Fatal("the token endpoint was never used: the test proves nothing")
	}
	logs := rc.Logs.String()
	for name, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("%s appears in the logs", name)
		}
		if strings.Contains(answers.String(), s) {
			t.Errorf("%s appears in an answer", name)
		}
	}
	// Clients' credentials never travel upstream.
	for _, h := range append(reg.AuthHeaders(), basic.AuthHeaders()...) {
		for _, cs := range clientSecrets {
			if strings.Contains(h, cs) {
				t.Fatalf("a client's Authorization reached upstream: %q", h)
			}
		}
	}
	if !strings.Contains(logs, `"level":"debug"`) && !strings.Contains(logs, `"level":"info"`) {
		t.Fatal("no logs were captured: the test proves nothing")
	}
}
