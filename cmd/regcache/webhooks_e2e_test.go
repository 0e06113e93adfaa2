package main

// Webhooks: a tag that moves upstream, found moved by a client's request after the TTL, is
// posted to the receivers configured under events.webhooks, signed, with headers whose
// values came from the environment.

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/feed"
	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

func TestWebhookTagChanged(t *testing.T) {
	// Not parallel: the header's value comes from the environment (t.Setenv).
	t.Setenv("REGCACHE_TEST_WEBHOOK_TOKEN", "hook-token-0123456789")
	type delivery struct {
		header http.Header
		body   []byte
	}
	got := make(chan delivery, 8)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- delivery{r.Header.Clone(), body}
	}))
	defer receiver.Close()

	reg := registrytest.New(t, registrytest.Bearer)
	first := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	const secret = "whsec-0123456789abcdef"
	rc := startRegcache(t, harness.Config("  tag_ttl: 200ms\n", harness.Upstream("reg.test", reg.URL))+harness.Block("events",
		"webhooks:",
		"  - name: ci",
		"    url: "+receiver.URL+"/hooks/regcache",
		"    secret: "+secret,
		"    headers:",
		"      Authorization: Bearer ${REGCACHE_TEST_WEBHOOK_TOKEN}",
		"    filter: {images: [reg.test/team/app]}",
	))
	const path = "/v2/reg.test/team/app/manifests/v1"
	if r := rc.Do(t, http.MethodGet, path); r.Status != http.StatusOK {
		t.Fatalf("first GET: %d", r.Status)
	}
	second := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	time.Sleep(250 * time.Millisecond) // past tag_ttl: the next HEAD revalidates
	if r := rc.Do(t, http.MethodHead, path); r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != second.Digest {
		t.Fatalf("HEAD after the move: %d %s", r.Status, r.Header.Get("Docker-Content-Digest"))
	}

	var d delivery
	select {
	case d = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery within 10 s of the move")
	}
	var e feed.Event
	if err := json.Unmarshal(d.body, &e); err != nil {
		t.Fatalf("body %s: %v", d.body, err)
	}
	if e.Type != feed.TagChanged || e.Image != "reg.test/team/app:v1" || e.Digest != second.Digest || e.PreviousDigest != first.Digest {
		t.Fatalf("delivered %+v; want v1 moved from %s to %s", e, first.Digest, second.Digest)
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(d.body)
	if d.header.Get("X-Regcache-Signature") != "sha256="+hex.EncodeToString(mac.Sum(nil)) {
		t.Fatalf("signature %q does not verify", d.header.Get("X-Regcache-Signature"))
	}
	if d.header.Get("X-Regcache-Event") != feed.TagChanged || !strings.HasPrefix(d.header.Get("X-Regcache-Delivery"), e.ID+".") ||
		d.header.Get("Authorization") != "Bearer hook-token-0123456789" || d.header.Get("Content-Type") != "application/json" {
		t.Fatalf("headers %v", d.header)
	}

	// The sender counts the delivery once the receiver's answer is read.
	const delivered = `regcache_webhook_deliveries_total{hook="ci",outcome="delivered"}`
	deadline := time.Now().Add(10 * time.Second)
	for rc.Metrics(t)[delivered] != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%s is %v, want 1", delivered, rc.Metrics(t)[delivered])
		}
		time.Sleep(10 * time.Millisecond)
	}
	m := rc.Metrics(t)
	if m[`regcache_webhook_deliveries_total{hook="ci",outcome="failed"}`] != 0 || m[`regcache_webhook_queue{hook="ci"}`] != 0 ||
		m[`regcache_webhook_dropped_total{hook="ci"}`] != 0 {
		t.Fatalf("metrics: %v", m)
	}
	if logs := rc.Logs.String(); strings.Contains(logs, secret) || strings.Contains(logs, "hook-token-0123456789") {
		t.Fatal("the log shows the webhook's secret or a header value")
	}

	// The first sight of the tag was no event, and the move one delivery: after shutdown
	// (which stops the sender), nothing more arrived.
	rc.Stop(t)
	if len(got) != 0 {
		t.Fatalf("%d more deliveries", len(got))
	}
}
