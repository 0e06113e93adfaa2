package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// randomBlob is n random bytes: a blob that cannot be mistaken for another.
func randomBlob(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// A blob GET without Range that upstream answers 206 is refused (502, a registry error,
// no digest header), whatever the size of the blob, and nothing of it is kept: the part
// (or the other bytes) must not pass as the blob its digest names.
func TestBlobWholeAnswered206Refused(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.NoAuth)
	large := randomBlob(1536 << 10) // over the default max_blob_size: streamed
	small := []byte(`{"architecture":"amd64","os":"linux"}`)
	ld := reg.PushBlob(t, "team/app", large)
	sd := reg.PushBlob(t, "team/app", small)
	rc := startRegcache(t, harness.Config("", harness.Upstream("ghcr.io", reg.URL)))

	for _, tc := range []struct {
		name  string
		d     string
		other []byte // what upstream sends instead, with 206
	}{
		{"large blob, other bytes", ld, randomBlob(1280 << 10)},
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
	blob := randomBlob(1536 << 10)
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
	blob := randomBlob(1536 << 10)
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
