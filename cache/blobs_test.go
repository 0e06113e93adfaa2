package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"regcache/upstream/registrytest"
)

// A small blob asked for with a Range is fetched whole once, kept, and answered whole
// from then on (RFC 9110 allows a whole answer to a Range): a client's Range on an image
// config must not cost an upstream request each time.
func TestBlobSmallRangedKept(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	data := registrytest.RandomBytes(4096)
	d := digest.Digest(reg.PushBlob(t, "team/app", data))
	c, o := newLocal(t, reg, Config{}, time.Minute)
	reg.ResetCounts()
	for i := range 3 {
		b, _, err := c.Blob(context.Background(), o, "team/app", d, BlobRequest{Body: true, Range: "bytes=0-9"})
		if err != nil || b.Stream != nil || !bytes.Equal(b.Data, data) {
			t.Fatalf("ranged GET %d: %d bytes held, stream %v, %v; want the whole blob held", i, len(b.Data), b.Stream, err)
		}
	}
	if n := reg.Count("GET", "blob"); n != 1 {
		t.Fatalf("3 ranged GETs of a small blob cost %d upstream GETs, want 1", n)
	}
}

// A blob too large to keep, asked for its bytes only (the digest API reading an image
// config): one upstream GET finds it large, and later asks are answered from what memory
// knows, with no upstream request and no stream.
func TestBlobKnownLargeNoStream(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	d := digest.Digest(reg.PushBlob(t, "team/app", registrytest.RandomBytes(4096)))
	c, o := newLocal(t, reg, Config{MaxBlobSize: 1024}, time.Minute)
	reg.ResetCounts()
	for i := range 3 {
		b, _, err := c.Blob(context.Background(), o, "team/app", d, BlobRequest{Body: true, NoStream: true})
		if err != nil || b.Stream != nil || b.Data != nil {
			t.Fatalf("look %d: %d bytes, stream %v, %v; want neither", i, len(b.Data), b.Stream, err)
		}
	}
	if n := reg.Count("GET", "blob"); n != 1 {
		t.Fatalf("3 looks at a large blob cost %d upstream GETs, want 1", n)
	}
}

// Concurrent first GETs of a large blob: one of them streams the GET that found it large,
// the others open their own, and every one gets the verified bytes; no stream is lost or
// closed twice.
func TestBlobLargeConcurrentFirstGets(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	data := registrytest.RandomBytes(64 << 10)
	d := digest.Digest(reg.PushBlob(t, "team/app", data))
	c, o := newLocal(t, reg, Config{MaxBlobSize: 1024}, time.Minute)
	reg.SetFault(registrytest.Delay(100 * time.Millisecond))
	reg.ResetCounts()
	const n = 8
	errs := make(chan error, n)
	for range n {
		go func() {
			b, _, err := c.Blob(context.Background(), o, "team/app", d, BlobRequest{Body: true})
			if err == nil {
				var got []byte
				got, err = io.ReadAll(b.Stream.Body)
				b.Stream.Body.Close()
				if err == nil && !bytes.Equal(got, data) {
					err = errors.New("wrong bytes")
				}
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := reg.Count("GET", "blob"); got > n {
		t.Fatalf("%d concurrent first GETs cost %d upstream GETs, want at most %d", n, got, n)
	}
}
