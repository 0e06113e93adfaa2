package hostname

import "testing"

func TestEndsInNumber(t *testing.T) {
	for _, tc := range []struct {
		host string
		want bool
	}{
		{"2852039166", true},
		{"0xa9fea9fe", true},
		{"0XA9FEA9FE", true},
		{"0x", true}, // 0x alone is 0
		{"0251.0376.0251.0376", true},
		{"169.254.43518", true},
		{"169.16689662", true},
		{"169.254.169.254.", true},
		{"cdn.123", true},
		{"cdn.0x1f", true},
		{"1e100.net", false},
		{"0x.example", false},
		{"cdn.0xzz", false}, // not hex: a name, if an odd one
		{"registry-1.docker.io", false},
		{"auth.docker.io.", false},
		{"", false},
		{".", false},
	} {
		if got := EndsInNumber(tc.host); got != tc.want {
			t.Errorf("EndsInNumber(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
}
