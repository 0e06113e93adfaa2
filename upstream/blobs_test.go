package upstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"regcache/upstream/registrytest"
)

// A 206 is a part, which no digest verifies: it answers a Range that was asked for, with
// the Content-Range that says which part, and nothing else.
func TestOpenBlobTakesPartsOnlyForRanges(t *testing.T) {
	reg := registrytest.New(t, registrytest.Bearer)
	data := bytes.Repeat([]byte("regcache"), 1000)
	d := digest.Digest(reg.PushBlob(t, "team/app", data))
	r := newTestRegistry(t, reg.URL, "", "")
	ctx := context.Background()
	partNoRange := func(w http.ResponseWriter, req *http.Request) bool {
		w.WriteHeader(http.StatusPartialContent) // a part, and no Content-Range
		_, _ = w.Write(data[:10])
		return true
	}

	for _, tc := range []struct {
		name       string
		fault      registrytest.Fault
		rng        string
		wantStatus int // 0: a KindInvalid error
		wantBody   []byte
	}{
		{"206 to a whole-blob GET", registrytest.PartialBlob(data[:100]), "", 0, nil},
		{"206 to a Range, without Content-Range", partNoRange, "bytes=0-9", 0, nil},
		{"206 to a Range", nil, "bytes=10-19", http.StatusPartialContent, data[10:20]},
		{"200 to a Range (ignored)", reg.IgnoreRange(), "bytes=10-19", http.StatusOK, data},
		{"200 to a whole-blob GET", nil, "", http.StatusOK, data},
	} {
		reg.SetFault(tc.fault)
		b, err := r.OpenBlob(ctx, http.MethodGet, "team/app", d, tc.rng)
		if tc.wantStatus == 0 {
			if KindOf(err) != KindInvalid {
				t.Fatalf("%s: got %v (%+v), want a KindInvalid error", tc.name, err, b)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, err := io.ReadAll(b.Body)
		b.Body.Close()
		if err != nil || b.Status != tc.wantStatus || !bytes.Equal(got, tc.wantBody) {
			t.Fatalf("%s: status %d, %d bytes, %v; want %d, %d bytes", tc.name, b.Status, len(got), err, tc.wantStatus, len(tc.wantBody))
		}
	}

	// GetBlob (the cache's path) refuses the 206 as such, not as a digest mismatch or a
	// blob too large to keep.
	reg.SetFault(registrytest.PartialBlob(data))
	var ue *Error
	if _, _, err := r.GetBlob(ctx, "team/app", d, "", 1<<20); KindOf(err) != KindInvalid || !errors.As(err, &ue) || ue.TooLarge || ue.Status != http.StatusPartialContent {
		t.Fatalf("GetBlob of a 206: %v", err)
	}
}

// GetBlob costs one GET whatever the blob turns out to be: a small whole blob is read and
// verified, anything larger (its length said or not) streams on from where the read
// stopped, verified as it passes.
func TestGetBlobOneRequest(t *testing.T) {
	reg := registrytest.New(t, registrytest.Bearer)
	small := []byte(`{"architecture":"amd64","os":"linux"}`)
	large := bytes.Repeat([]byte("regcache"), 1000)
	ds := digest.Digest(reg.PushBlob(t, "team/app", small))
	dl := digest.Digest(reg.PushBlob(t, "team/app", large))
	r := newTestRegistry(t, reg.URL, "", "")
	ctx := context.Background()
	const limit = 1024

	for _, tc := range []struct {
		name      string
		d         digest.Digest
		fault     registrytest.Fault
		wantData  []byte // read whole
		wantBlob  []byte // streamed
		wantError error  // the stream's end
	}{
		{"small", ds, nil, small, nil, nil},
		{"large, length said", dl, nil, nil, large, nil},
		{"large, length unsaid", dl, registrytest.BlobBody(large, true), nil, large, nil},
		{"large, other bytes", dl, registrytest.BlobBody(bytes.Repeat([]byte("x"), len(large)), true), nil, nil, ErrDigestMismatch},
	} {
		reg.SetFault(tc.fault)
		gets := reg.Count(http.MethodGet, "blob")
		data, b, err := r.GetBlob(ctx, "team/app", tc.d, "", limit)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if (data == nil) == (b == nil) {
			t.Fatalf("%s: data %d bytes and stream %v: want exactly one", tc.name, len(data), b)
		}
		if tc.wantData != nil && !bytes.Equal(data, tc.wantData) {
			t.Fatalf("%s: data %q", tc.name, data)
		}
		if b != nil {
			got, err := io.ReadAll(b.Body)
			b.Body.Close()
			if tc.wantError != nil {
				if !errors.Is(err, tc.wantError) {
					t.Fatalf("%s: stream ended with %v, want %v", tc.name, err, tc.wantError)
				}
			} else if err != nil || !bytes.Equal(got, tc.wantBlob) {
				t.Fatalf("%s: streamed %d bytes, %v; want %d", tc.name, len(got), err, len(tc.wantBlob))
			}
		}
		if n := reg.Count(http.MethodGet, "blob") - gets; n != 1 {
			t.Fatalf("%s: %d upstream GETs, want 1", tc.name, n)
		}
	}
}

// A small blob whose body stalls after its first bytes: the whole read is bounded by the
// upstream timeout and ends in a timeout error, and the timer that bounds it fires safely
// however the read ended (it once read the returned *Blob as it was set to nil, and
// crashed the process from its own goroutine).
func TestGetBlobSmallBodyStalls(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	small := []byte(`{"architecture":"amd64","os":"linux"}`)
	ds := digest.Digest(reg.PushBlob(t, "team/app", small))
	r, err := New(Options{Name: "reg.test", URL: reg.URL, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	reg.SetFault(func(w http.ResponseWriter, req *http.Request) bool {
		if req.Method != http.MethodGet || !strings.Contains(req.URL.Path, "/blobs/") {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(small)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(small[:5])
		w.(http.Flusher).Flush()
		select {
		case <-time.After(3 * time.Second):
		case <-req.Context().Done():
		}
		return true
	})
	for range 3 {
		start := time.Now()
		data, b, err := r.GetBlob(context.Background(), "team/app", ds, "", 1024)
		var ue *Error
		if data != nil || b != nil || !errors.As(err, &ue) || !ue.Timeout {
			t.Fatalf("a stalled small blob: %d bytes, %v, %v; want a timeout", len(data), b, err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("a stalled small blob answered after %v; the timeout is 300ms", took)
		}
	}
	time.Sleep(500 * time.Millisecond) // any timer still to fire does so while the test runs
}
