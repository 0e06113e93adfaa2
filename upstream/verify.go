package upstream

import (
	"errors"
	"io"

	"github.com/opencontainers/go-digest"
)

// ErrDigestMismatch ends a verified stream whose bytes do not hash to their digest.
var ErrDigestMismatch = errors.New("blob does not match its digest")

// VerifyingReader passes a blob through while hashing it, and withholds the final byte
// until upstream has ended and the digest matched: a client never holds a complete wrong
// blob, because a mismatch ends the stream (and the connection) one byte short.
type VerifyingReader struct {
	r        io.Reader
	verifier digest.Verifier
	size     int64 // expected bytes, -1 when unknown
	passed   int64 // bytes handed to the caller
	hold     [1]byte
	scratch  [1]byte
	primed   bool // hold has a byte not yet handed out
	eof      bool // upstream has ended
	err      error
}

// NewVerifyingReader verifies r against d; size is the expected length, or -1.
func NewVerifyingReader(r io.Reader, d digest.Digest, size int64) *VerifyingReader {
	return &VerifyingReader{r: r, verifier: d.Verifier(), size: size}
}

func (v *VerifyingReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for !v.primed && !v.eof {
		n, err := v.r.Read(v.hold[:])
		if n == 1 {
			_, _ = v.verifier.Write(v.hold[:])
			v.primed = true
		}
		if err == io.EOF {
			v.eof = true
		} else if err != nil {
			v.err = err
			return 0, err
		}
	}
	if v.eof {
		return v.finish(p)
	}
	// One byte is held; read behind it, hand out the held byte and all but the last new one.
	dst := p[1:]
	if len(dst) == 0 {
		dst = v.scratch[:]
	}
	m, err := v.r.Read(dst)
	_, _ = v.verifier.Write(dst[:m])
	n := 0
	if m > 0 {
		p[0] = v.hold[0]
		if len(p) > 1 {
			n, v.hold[0] = m, p[m] // p[1..m] are new: hand out p[0..m-1], hold p[m]
		} else {
			n, v.hold[0] = 1, v.scratch[0]
		}
		v.passed += int64(n)
	}
	switch {
	case err == io.EOF:
		v.eof = true
		if n == 0 {
			return v.finish(p)
		}
		return n, nil
	case err != nil:
		v.err = err
	}
	return n, err
}

// finish runs once upstream has ended: the held byte goes out only if everything matched.
func (v *VerifyingReader) finish(p []byte) (int, error) {
	total := v.passed
	if v.primed {
		total++
	}
	switch {
	case v.size >= 0 && total != v.size:
		v.err = io.ErrUnexpectedEOF
	case !v.verifier.Verified():
		v.err = ErrDigestMismatch
	default:
		v.err = io.EOF
	}
	if v.err != io.EOF || !v.primed {
		return 0, v.err
	}
	p[0] = v.hold[0]
	v.primed = false
	v.passed++
	return 1, io.EOF
}
