package registrytest

import "crypto/rand"

// RandomBytes is n random bytes: a blob that cannot be mistaken for another.
func RandomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}
