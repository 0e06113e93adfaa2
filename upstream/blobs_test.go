package upstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"testing"

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

	// FetchBlob (the small-blob path) refuses the 206 as such, not as a digest mismatch
	// or a blob too large to keep.
	reg.SetFault(registrytest.PartialBlob(data))
	var ue *Error
	if _, _, err := r.FetchBlob(ctx, "team/app", d, 1<<20); KindOf(err) != KindInvalid || !errors.As(err, &ue) || ue.TooLarge || ue.Status != http.StatusPartialContent {
		t.Fatalf("FetchBlob of a 206: %v", err)
	}
}
