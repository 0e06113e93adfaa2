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
	passed   int64
	held     []byte // the withheld tail (one byte) once the body is exhausted
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
	if len(p) < 2 {
		return 0, io.ErrShortBuffer // one byte is always held back
	}
	// Keep one byte of look-behind: read into p, then hold back its last byte until the
	// next read shows whether more follows.
	if v.held == nil {
		v.held = make([]byte, 0, 1)
	}
	n := copy(p, v.held)
	v.held = v.held[:0]
	m, err := v.r.Read(p[n:])
	if m > 0 {
		_, _ = v.verifier.Write(p[n : n+m])
	}
	n += m
	if err == nil {
		if n == 0 {
			return 0, nil
		}
		// Withhold the last byte of what we have.
		v.held = append(v.held, p[n-1])
		n--
		v.passed += int64(n)
		return n, nil
	}
	if err != io.EOF {
		v.err = err
		v.passed += int64(n)
		return n, err
	}
	// Upstream is done: everything, including the held byte, is in p[:n].
	total := v.passed + int64(n)
	switch {
	case v.size >= 0 && total != v.size:
		v.err = io.ErrUnexpectedEOF
	case !v.verifier.Verified():
		v.err = ErrDigestMismatch
	}
	if v.err != nil {
		// Release all but the final byte: the stream ends short.
		if n > 0 {
			n--
		}
		v.passed += int64(n)
		return n, v.err
	}
	v.passed = total
	v.err = io.EOF
	return n, io.EOF
}
