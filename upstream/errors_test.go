package upstream

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name, v string
		want    time.Duration
	}{
		{"seconds", "120", 2 * time.Minute},
		{"zero seconds", "0", 0},
		{"seconds with spaces", "  30 ", 30 * time.Second},
		{"negative seconds", "-5", 0},
		{"HTTP-date in the future", "Sun, 01 Jun 2025 12:01:30 GMT", 90 * time.Second},
		{"RFC 850 date", "Sunday, 01-Jun-25 12:00:10 GMT", 10 * time.Second},
		{"asctime date", "Sun Jun  1 12:00:05 2025", 5 * time.Second},
		{"HTTP-date in the past", "Sun, 01 Jun 2025 11:59:00 GMT", 0},
		{"HTTP-date now", "Sun, 01 Jun 2025 12:00:00 GMT", 0},
		{"empty", "", 0},
		{"garbage", "soon", 0},
		{"fraction", "1.5", 0},
		{"unit suffix", "10s", 0},
		{"ISO date is not an HTTP-date", "2025-06-01T12:05:00Z", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseRetryAfter(tc.v, now); got != tc.want {
				t.Fatalf("parseRetryAfter(%q) = %v, want %v", tc.v, got, tc.want)
			}
		})
	}
}

func TestCheckResponseKinds(t *testing.T) {
	r := &Registry{name: "up"}
	for _, tc := range []struct {
		status     int
		header     string
		body       string
		kind       Kind
		code       string
		retryAfter time.Duration
	}{
		{status: 404, body: `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`, kind: KindNotFound, code: "MANIFEST_UNKNOWN"},
		{status: 401, body: `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, kind: KindDenied, code: "UNAUTHORIZED"},
		{status: 403, kind: KindDenied},
		{status: 429, header: "60", kind: KindRateLimited, retryAfter: time.Minute},
		{status: 503, header: "7", kind: KindUnavailable, retryAfter: 7 * time.Second},
		{status: 500, body: "<html>oops</html>", kind: KindUnavailable},
		{status: 400, kind: KindInvalid},
	} {
		resp := &http.Response{StatusCode: tc.status, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(tc.body)),
			Request: &http.Request{Method: http.MethodGet}}
		if tc.header != "" {
			resp.Header.Set("Retry-After", tc.header)
		}
		err := r.checkResponse(resp)
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("%d: %v is no *Error", tc.status, err)
		}
		if e.Kind != tc.kind || e.Code != tc.code || e.RetryAfter != tc.retryAfter || e.Status != tc.status || e.Message == "" {
			t.Errorf("%d: got %+v", tc.status, e)
		}
		if KindOf(err) != tc.kind || !errors.Is(err, sentinels[tc.kind]) {
			t.Errorf("%d: KindOf/errors.Is disagree with %v", tc.status, e.Kind)
		}
	}
	if err := r.checkResponse(&http.Response{StatusCode: 200}); err != nil {
		t.Fatalf("200: %v", err)
	}
}
