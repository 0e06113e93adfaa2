package watch

import (
	"errors"
	"testing"
	"time"

	"regcache/upstream"
)

func TestBackoff(t *testing.T) {
	const o = time.Minute
	other := errors.New("connection refused")
	gone := &upstream.Error{Kind: upstream.KindNotFound}
	for _, tc := range []struct {
		fails int
		err   error
		want  time.Duration
	}{
		{1, other, 5 * time.Second},
		{2, other, 10 * time.Second},
		{4, other, 40 * time.Second},
		{5, other, time.Minute}, // capped at the TTL
		{60, other, time.Minute},
		{1, gone, time.Minute}, // asking sooner would not change the answer
		{1, errStale, 5 * time.Second},
	} {
		if got := backoff(o, tc.fails, tc.err); got != tc.want {
			t.Errorf("backoff(%d, %v) = %v; want %v", tc.fails, tc.err, got, tc.want)
		}
	}
	const short = 300 * time.Millisecond
	if got := backoff(short, 1, other); got != 300*time.Millisecond {
		t.Errorf("with a 300ms TTL: %v; want the TTL", got)
	}
}

func TestNextLook(t *testing.T) {
	const o = time.Minute
	now := time.Now()
	if got := nextLook(o, now.Add(-10*time.Second), now); !got.Equal(now.Add(50 * time.Second)) {
		t.Errorf("fetched 10 s ago: next look at %v; want when it goes stale, in 50 s", got.Sub(now))
	}
	if got := nextLook(o, now.Add(-2*time.Minute), now); !got.Equal(now.Add(minInterval)) {
		t.Errorf("fetched past its TTL: next look in %v; want minInterval", got.Sub(now))
	}
}
