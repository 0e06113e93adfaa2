package main

// Blobs: small ones (image configs) fetched once, verified and kept; large ones streamed,
// verified as they pass, with the client's Range passed through; a HEAD costs a HEAD; and
// an upstream that lies, answers part of a blob as the whole, stalls or resets never gets
// a wrong or unfinished blob to a client as complete.

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

func TestBlobsConfigCachedAndVerified(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	cfgDigest, cfgBytes := reg.ConfigOf(t, "team/app", "v1")
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL)))
	reg.ResetCounts()
	path := "/v2/ghcr.io/team/app/blobs/" + cfgDigest.String()
	for i, wantCache := range []string{"MISS", "HIT", "HIT"} {
		r := rc.Do(t, http.MethodGet, path)
		if r.Status != 200 || !bytes.Equal(r.Body, cfgBytes) || r.Header.Get("Docker-Content-Digest") != cfgDigest.String() {
			t.Fatalf("GET %d: %d digest %q", i, r.Status, r.Header.Get("Docker-Content-Digest"))
		}
		if r.Header.Get("X-Cache") != wantCache {
			t.Fatalf("GET %d: X-Cache %q, want %s", i, r.Header.Get("X-Cache"), wantCache)
		}
	}
	h := rc.Do(t, http.MethodHead, path)
	if h.Status != 200 || h.Header.Get("Content-Length") != fmt.Sprint(len(cfgBytes)) {
		t.Fatalf("HEAD: %d %v", h.Status, h.Header)
	}
	if n := reg.Count("GET", "blob"); n != 1 {
		t.Fatalf("upstream blob GETs = %d, want 1", n)
	}

	// A lying upstream: a small blob whose bytes do not match is refused and not cached.
	reg2 := registrytest.New(t, registrytest.NoAuth)
	d := reg2.PushBlob(t, "team/app", []byte(`{"architecture":"amd64","os":"linux"}`))
	reg2.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		w.Header().Set("Content-Length", "4")
		_, _ = w.Write([]byte("evil"))
		return true
	})
	rc2 := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg2.URL)))
	r := rc2.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+d)
	if r.Status != 502 {
		t.Fatalf("lying blob: %d %s", r.Status, r.Body)
	}
	reg2.SetFault(nil)
	if r := rc2.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+d); r.Status != 200 || r.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("after the lie: %d %q", r.Status, r.Header.Get("X-Cache"))
	}
}

func TestBlobsLargeStreamedVerifiedWithRange(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	big := registrytest.RandomBytes(24 << 20)
	d := reg.PushBlob(t, "team/app", big)
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL)))
	path := "/v2/ghcr.io/team/app/blobs/" + d

	resp, err := rc.Client.Get(rc.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, big) {
		t.Fatalf("big blob: status %d, %d bytes, err %v", resp.StatusCode, len(got), err)
	}

	r := rc.Do(t, http.MethodGet, path, "Range", "bytes=100-199")
	if r.Status != 206 || !bytes.Equal(r.Body, big[100:200]) {
		t.Fatalf("range: %d, %d bytes", r.Status, len(r.Body))
	}
	h := rc.Do(t, http.MethodHead, path)
	if h.Status != 200 || h.Header.Get("Content-Length") != fmt.Sprint(len(big)) {
		t.Fatalf("HEAD big: %d %v", h.Status, h.Header)
	}

	// Upstream corrupts the stream: the client never gets the full length.
	reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") || r.Header.Get("Range") != "" {
			return false
		}
		bad := append([]byte(nil), big...)
		bad[len(bad)-10] ^= 0xff
		w.Header().Set("Content-Length", fmt.Sprint(len(bad)))
		_, _ = w.Write(bad)
		return true
	})
	resp, err = rc.Client.Get(rc.URL + path)
	if err == nil {
		got, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil || len(got) >= len(big) {
			t.Fatalf("corrupt stream delivered %d of %d bytes without error", len(got), len(big))
		}
	}
}

func TestStreamedBlobMemoryBounded(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	big := registrytest.RandomBytes(32 << 20)
	d := reg.PushBlob(t, "team/app", big)
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL)))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	resp, err := rc.Client.Get(rc.URL + "/v2/ghcr.io/team/app/blobs/" + d)
	if err != nil {
		t.Fatal(err, rc.Logs.String())
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	runtime.ReadMemStats(&after)
	if err != nil || n != int64(len(big)) {
		t.Fatalf("copied %d, err %v", n, err)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated while streaming 32 MiB through regcache: %.1f MiB", float64(alloc)/(1<<20))
	if alloc > 16<<20 {
		t.Fatalf("streaming a 32 MiB blob allocated %d MiB: it is being buffered", alloc>>20)
	}
}

// A client HEAD on a blob costs an upstream HEAD, never a GET; a large blob costs one
// upstream GET per client GET: the GET that finds it too large to keep is the one that
// streams it.
func TestBlobHeadAndLargeBlobEconomy(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	small := reg.PushBlob(t, "team/app", []byte(`{"os":"linux","architecture":"amd64"}`))
	bigData := registrytest.RandomBytes(3 << 20)
	big := reg.PushBlob(t, "team/app", bigData)
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL)))
	reg.ResetCounts()

	h := rc.Do(t, http.MethodHead, "/v2/ghcr.io/team/app/blobs/"+small)
	if h.Status != 200 || h.Header.Get("Content-Length") != "37" {
		t.Fatalf("HEAD small: %d %v", h.Status, h.Header)
	}
	if reg.Count("GET", "blob") != 0 || reg.Count("HEAD", "blob") != 1 {
		t.Fatalf("HEAD cost GET %d HEAD %d, want 0 and 1", reg.Count("GET", "blob"), reg.Count("HEAD", "blob"))
	}
	if r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+small); r.Status != 200 || r.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("GET small after HEAD: %d %q", r.Status, r.Header.Get("X-Cache"))
	}
	reg.ResetCounts()
	for i := 0; i < 3; i++ {
		r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+big)
		if r.Status != 200 || !bytes.Equal(r.Body, bigData) {
			t.Fatalf("GET big %d: %d, %d bytes", i, r.Status, len(r.Body))
		}
	}
	if n := reg.Count("GET", "blob"); n != 3 {
		t.Fatalf("3 large-blob GETs cost %d upstream GETs, want 3", n)
	}
}

// A blob 404 must not poison the manifest with the same digest, nor the other way round.
func TestBlobAndManifestNegativeCacheApart(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("  negative_ttl: 1m\n", harness.Upstream("ghcr.io", reg.URL)))
	if r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+img.Digest); r.Status != 404 {
		t.Fatalf("manifest digest as a blob: %d", r.Status)
	}
	if r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/manifests/"+img.Digest); r.Status != 200 {
		t.Fatalf("manifest after a blob 404 of the same digest: %d %s", r.Status, r.Body)
	}
}

// An upstream that sends part of a blob and then stalls is cut after its timeout; the
// client's transfer ends instead of hanging.
func TestStalledBlobStreamEnds(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	data := registrytest.RandomBytes(3 << 20)
	d := reg.PushBlob(t, "team/app", data)
	stall := make(chan struct{})
	t.Cleanup(func() { close(stall) })
	reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		_, _ = w.Write(data[:64<<10])
		w.(http.Flusher).Flush()
		select {
		case <-stall:
		case <-r.Context().Done():
		}
		return true
	})
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL, "timeout: 1s")))
	start := time.Now()
	resp, err := rc.Client.Get(rc.URL + "/v2/ghcr.io/team/app/blobs/" + d)
	if err == nil {
		n, rerr := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if rerr == nil && n == int64(len(data)) {
			t.Fatal("a stalled upstream produced a complete blob")
		}
	}
	if took := time.Since(start); took > 8*time.Second {
		t.Fatalf("the stalled transfer took %s to end; the upstream timeout is 1s", took)
	}
}

// A large-blob stream that fails before its first body byte (upstream sends its headers,
// then resets or stalls) gets a registry error with a status, not a 200 cut short: the
// status line waits for the first byte.
func TestBlobStreamFailsBeforeFirstByte(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	bigData := registrytest.RandomBytes(3 << 20)
	big := reg.PushBlob(t, "team/app", bigData)
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL, "timeout: 500ms")))
	headersThen := func(after func(http.ResponseWriter)) registrytest.Fault {
		return registrytest.OnMethod(http.MethodGet, func(w http.ResponseWriter, r *http.Request) bool {
			if !strings.Contains(r.URL.Path, "/blobs/") {
				return false
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.Itoa(len(bigData)))
			w.Header().Set("Docker-Content-Digest", big)
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			after(w)
			return true
		})
	}
	for _, tc := range []struct {
		name   string
		fault  registrytest.Fault
		status int
		code   string
	}{
		{"reset", headersThen(func(w http.ResponseWriter) {
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				_ = conn.Close()
			}
		}), http.StatusBadGateway, "UPSTREAM_FAILED"},
		{"stall past the timeout", headersThen(func(http.ResponseWriter) { time.Sleep(1500 * time.Millisecond) }), http.StatusGatewayTimeout, "UPSTREAM_TIMEOUT"},
	} {
		reg.SetFault(tc.fault)
		r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+big)
		if r.Status != tc.status || !strings.Contains(string(r.Body), `"code":"`+tc.code+`"`) {
			t.Fatalf("%s before the first byte: %d %.200s; want %d %s", tc.name, r.Status, r.Body, tc.status, tc.code)
		}
	}
	reg.SetFault(nil)
	if r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+big); r.Status != 200 || !bytes.Equal(r.Body, bigData) {
		t.Fatalf("after upstream recovered: %d, %d bytes", r.Status, len(r.Body))
	}
}

// A blob GET without Range that upstream answers 206 is refused (502, a registry error,
// no digest header), whatever the size of the blob, and nothing of it is kept: the part
// (or the other bytes) must not pass as the blob its digest names.
func TestBlobWholeAnswered206Refused(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	large := registrytest.RandomBytes(1536 << 10) // over the default max_blob_size: streamed
	small := []byte(`{"architecture":"amd64","os":"linux"}`)
	ld := reg.PushBlob(t, "team/app", large)
	sd := reg.PushBlob(t, "team/app", small)
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL)))

	for _, tc := range []struct {
		name  string
		d     string
		other []byte // what upstream sends instead, with 206
	}{
		{"large blob, other bytes", ld, registrytest.RandomBytes(1280 << 10)},
		{"large blob, its own first part", ld, large[:1280<<10]},
		{"small blob, other bytes", sd, []byte(`{"os":"evil"}`)},
	} {
		reg.SetFault(registrytest.PartialBlob(tc.other))
		r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+tc.d)
		if r.Status != http.StatusBadGateway || !strings.Contains(string(r.Body), `"errors"`) {
			t.Fatalf("%s: upstream's 206 to a GET without Range answered %d (%d bytes, Content-Range %q); want 502 with a registry error",
				tc.name, r.Status, len(r.Body), r.Header.Get("Content-Range"))
		}
		if got := r.Header.Get("Docker-Content-Digest"); got != "" {
			t.Fatalf("%s: the refusal names digest %s", tc.name, got)
		}
	}

	// Nothing of the lie was kept: with upstream honest again, every answer is the blob.
	reg.SetFault(nil)
	for _, b := range []struct {
		d    string
		data []byte
	}{{ld, large}, {sd, small}} {
		r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+b.d)
		if r.Status != 200 || !bytes.Equal(r.Body, b.data) || r.Header.Get("X-Cache") != "MISS" {
			t.Fatalf("after the 206s: GET %s: %d %q, %d bytes", b.d, r.Status, r.Header.Get("X-Cache"), len(r.Body))
		}
		h := rc.Do(t, http.MethodHead, "/v2/ghcr.io/team/app/blobs/"+b.d)
		if h.Status != 200 || h.Header.Get("Content-Length") != fmt.Sprint(len(b.data)) {
			t.Fatalf("after the 206s: HEAD %s: %d, Content-Length %q", b.d, h.Status, h.Header.Get("Content-Length"))
		}
	}
}

// A whole blob that streams (over max_blob_size) and does not match its digest never
// reaches a client complete: whether upstream announces its length or sends chunks, and
// whether or not the client asked for a Range that upstream ignored, the client sees no
// 200 at all or a transfer that fails before its end.
func TestBlobStreamMismatchNeverComplete(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	blob := registrytest.RandomBytes(1536 << 10)
	d := reg.PushBlob(t, "team/app", blob)
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL)))
	flipped := bytes.Clone(blob)
	flipped[len(flipped)-10] ^= 0xff
	longer := append(bytes.Clone(blob), 'x')

	for _, tc := range []struct {
		name    string
		body    []byte
		chunked bool
		rng     string
	}{
		{"one byte changed, with Content-Length", flipped, false, ""},
		{"one byte changed, chunked", flipped, true, ""},
		{"one byte more, chunked", longer, true, ""},
		{"one byte changed, Range ignored", flipped, false, "bytes=0-99"},
		{"one byte changed, chunked, Range ignored", flipped, true, "bytes=0-99"},
	} {
		reg.SetFault(registrytest.BlobBody(tc.body, tc.chunked))
		req, _ := http.NewRequest(http.MethodGet, rc.URL+"/v2/ghcr.io/team/app/blobs/"+d, nil)
		if tc.rng != "" {
			req.Header.Set("Range", tc.rng)
		}
		resp, err := rc.Client.Do(req)
		if err != nil {
			continue // no answer at all: a failed transfer
		}
		got, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode >= 400:
			// a registry error: nothing was passed on
		case resp.StatusCode != 200:
			t.Fatalf("%s: answered %d", tc.name, resp.StatusCode)
		case rerr == nil:
			t.Fatalf("%s: a blob that fails its digest was delivered as a complete 200 (%d bytes, wrong body %v)",
				tc.name, len(got), bytes.Equal(got, tc.body))
		case len(got) >= len(tc.body) || bytes.Equal(got, tc.body):
			t.Fatalf("%s: the transfer failed (%v) but only after the whole wrong body", tc.name, rerr)
		}
	}
	reg.SetFault(nil)
	if r := rc.Do(t, http.MethodGet, "/v2/ghcr.io/team/app/blobs/"+d); r.Status != 200 || !bytes.Equal(r.Body, blob) {
		t.Fatalf("after the lies: %d, %d bytes", r.Status, len(r.Body))
	}
}

// A client's own Range passes through as partial content, with upstream's Content-Range
// and without a Docker-Content-Digest that would claim the part is the blob; HEAD and a
// whole GET name the digest. An upstream that ignores the Range answers 200 with the whole
// blob, which is verified and named like any whole blob.
func TestBlobClientRangePartialWithoutDigest(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	blob := registrytest.RandomBytes(1536 << 10)
	d := reg.PushBlob(t, "team/app", blob)
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL)))
	path := "/v2/ghcr.io/team/app/blobs/" + d

	r := rc.Do(t, http.MethodGet, path, "Range", "bytes=100-199")
	if r.Status != 206 || !bytes.Equal(r.Body, blob[100:200]) {
		t.Fatalf("Range: %d, %d bytes", r.Status, len(r.Body))
	}
	if got, want := r.Header.Get("Content-Range"), fmt.Sprintf("bytes 100-199/%d", len(blob)); got != want {
		t.Fatalf("Range: Content-Range %q, want %q", got, want)
	}
	if got := r.Header.Get("Docker-Content-Digest"); got != "" {
		t.Fatalf("Range: a 100-byte part is answered with Docker-Content-Digest %s, the whole blob's", got)
	}

	h := rc.Do(t, http.MethodHead, path)
	if h.Status != 200 || h.Header.Get("Content-Length") != fmt.Sprint(len(blob)) || h.Header.Get("Docker-Content-Digest") != d {
		t.Fatalf("HEAD: %d, Content-Length %q, digest %q", h.Status, h.Header.Get("Content-Length"), h.Header.Get("Docker-Content-Digest"))
	}
	g := rc.Do(t, http.MethodGet, path)
	if g.Status != 200 || !bytes.Equal(g.Body, blob) || g.Header.Get("Docker-Content-Digest") != d {
		t.Fatalf("GET: %d, %d bytes, digest %q", g.Status, len(g.Body), g.Header.Get("Docker-Content-Digest"))
	}

	reg.SetFault(reg.IgnoreRange())
	r = rc.Do(t, http.MethodGet, path, "Range", "bytes=100-199")
	if r.Status != 200 || !bytes.Equal(r.Body, blob) || r.Header.Get("Docker-Content-Digest") != d || r.Header.Get("Content-Range") != "" {
		t.Fatalf("Range ignored upstream: %d, %d bytes, digest %q, Content-Range %q; want the whole blob, 200",
			r.Status, len(r.Body), r.Header.Get("Docker-Content-Digest"), r.Header.Get("Content-Range"))
	}
}
