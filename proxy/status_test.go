package proxy

import (
	"testing"
	"time"
)

// The page's numbers as a person reads them.
func TestStatusFormats(t *testing.T) {
	n := int64(-1234567)
	for _, c := range []struct{ got, want string }{
		{formatCount(uint64(0)), "0"},
		{formatCount(uint64(999)), "999"},
		{formatCount(uint64(1000)), "1,000"},
		{formatCount(uint64(12345678)), "12,345,678"},
		{formatCount(&n), "-1,234,567"},
		{formatCount((*int64)(nil)), "?"},
		{formatBytes(512), "512 B"},
		{formatBytes(5939), "5.8 KiB"},
		{formatBytes(64 << 20), "64.0 MiB"},
		{formatDuration(0), "0s"},
		{formatDuration(40 * time.Second), "40s"},
		{formatDuration(6 * time.Hour), "6h"},
		{formatDuration(6*time.Hour + 5*time.Second), "6h"},
		{formatDuration(26*time.Hour + 3*time.Minute), "1d 2h"},
		{formatDuration(5*time.Minute + 2*time.Second), "5m 2s"},
		{shortDigest("sha256:0561bb34e8ad0123456789"), "sha256:0561bb34e8ad"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}
