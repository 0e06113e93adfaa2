package configs

import "fmt"

// Secret holds a password behind a pointer. fmt never follows a pointer below the top
// level, and a bad verb (%d, or %s on a struct holding a *Credentials) bypasses String,
// GoString and Format altogether, so only a representation without the plaintext reachable
// by reflection at depth 0/1 is safe.
type Secret struct{ v *string }

// NewSecret wraps v.
func NewSecret(v string) Secret { return Secret{&v} }

// Reveal returns the value, for the one place that sends it upstream.
func (s Secret) Reveal() string {
	if s.v == nil {
		return ""
	}
	return *s.v
}

// String hides the value.
func (s Secret) String() string {
	if s.Reveal() == "" {
		return ""
	}
	return "REDACTED"
}

// GoString hides the value from %#v too.
func (s Secret) GoString() string { return `"` + s.String() + `"` }

// Format hides the value from every verb.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, s.GoString())
		return
	}
	fmt.Fprint(f, s.String())
}
