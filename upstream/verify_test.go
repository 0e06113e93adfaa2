package upstream

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/opencontainers/go-digest"
)

func TestVerifyingReader(t *testing.T) {
	data := bytes.Repeat([]byte("regcache"), 5000)
	good := digest.FromBytes(data)
	bad := append([]byte(nil), data...)
	bad[len(bad)-1] ^= 1
	wrap := map[string]func(io.Reader) io.Reader{
		"plain":      func(r io.Reader) io.Reader { return r },
		"one byte":   iotest.OneByteReader,
		"half":       iotest.HalfReader,
		"data+EOF":   iotest.DataErrReader,
		"one-byte p": func(r io.Reader) io.Reader { return r }, // read below with 1-byte buffers
	}
	for name, w := range wrap {
		t.Run(name, func(t *testing.T) {
			read := func(r io.Reader) ([]byte, error) {
				if name != "one-byte p" {
					return io.ReadAll(r)
				}
				var out []byte
				var b [1]byte
				for {
					n, err := r.Read(b[:])
					out = append(out, b[:n]...)
					if err == io.EOF {
						return out, nil
					}
					if err != nil {
						return out, err
					}
				}
			}
			got, err := read(NewVerifyingReader(w(bytes.NewReader(data)), good, int64(len(data))))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("good blob: %d bytes, err %v", len(got), err)
			}
			got, err = read(NewVerifyingReader(w(bytes.NewReader(bad)), good, int64(len(bad))))
			if !errors.Is(err, ErrDigestMismatch) || len(got) != len(bad)-1 {
				t.Fatalf("bad blob: %d of %d bytes, err %v; want all but the last byte and a mismatch", len(got), len(bad), err)
			}
			got, err = read(NewVerifyingReader(w(bytes.NewReader(data[:100])), good, int64(len(data))))
			if err == nil || len(got) >= 100 {
				t.Fatalf("short blob: %d bytes, err %v", len(got), err)
			}
			got, err = read(NewVerifyingReader(w(bytes.NewReader(data)), good, -1))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("unknown size: %d bytes, err %v", len(got), err)
			}
		})
	}
	empty := digest.FromBytes(nil)
	if got, err := io.ReadAll(NewVerifyingReader(bytes.NewReader(nil), empty, 0)); err != nil || len(got) != 0 {
		t.Fatalf("empty blob: %v %d", err, len(got))
	}
}
