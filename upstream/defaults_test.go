package upstream

import (
	"net/http"
	"testing"
)

// Zero Options bounds take the package's defaults; the configuration's defaults are these
// same constants, the one place each is written.
func TestZeroOptionsTakeDefaults(t *testing.T) {
	r, err := New(Options{Name: "example", URL: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Timeout() != DefaultTimeout {
		t.Errorf("timeout %v, want DefaultTimeout %v", r.Timeout(), DefaultTimeout)
	}
	if got := r.client.Transport.(*http.Transport).TLSHandshakeTimeout; got != DefaultConnectTimeout {
		t.Errorf("connect timeout %v, want DefaultConnectTimeout %v", got, DefaultConnectTimeout)
	}
	if got := cap(r.slots.ch); got != DefaultMaxConcurrent {
		t.Errorf("max concurrent %d, want DefaultMaxConcurrent %d", got, DefaultMaxConcurrent)
	}
}
