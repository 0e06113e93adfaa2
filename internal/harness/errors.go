package harness

// Registry errors: the {"errors":[{"code":...,"message":...}]} body every refusal and
// failure carries, and the checks of error answers that many tests make.

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// RegistryError is one entry of a registry error body.
type RegistryError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// ParseErrors reads a registry error body; ok is false for anything else (not JSON, no
// entry, or a first entry without a code).
func ParseErrors(body []byte) (errs []RegistryError, ok bool) {
	var b struct {
		Errors []RegistryError `json:"errors"`
	}
	if err := json.Unmarshal(body, &b); err != nil || len(b.Errors) == 0 || b.Errors[0].Code == "" {
		return nil, false
	}
	return b.Errors, true
}

// ErrorOf returns the first registry error of r; a body that is none fails the test.
func ErrorOf(t testing.TB, r Response) RegistryError {
	t.Helper()
	errs, ok := ParseErrors(r.Body)
	if !ok {
		t.Fatalf("status %d: body %q is no registry error", r.Status, r.Body)
	}
	return errs[0]
}

// ExpectError checks an error answer to method: one of statuses, no Docker-Content-Digest
// and, but for a HEAD (which has no body), a JSON registry error body. It returns the first
// code ("" for a HEAD).
func ExpectError(t testing.TB, what string, r Response, method string, statuses ...int) string {
	t.Helper()
	if !slices.Contains(statuses, r.Status) {
		t.Fatalf("%s: status %d, want one of %v: %s", what, r.Status, statuses, r.Body)
	}
	if r.Header.Get("Docker-Content-Digest") != "" {
		t.Fatalf("%s: an error answer carries Docker-Content-Digest %s", what, r.Header.Get("Docker-Content-Digest"))
	}
	if method == http.MethodHead {
		return ""
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("%s: error Content-Type %q", what, ct)
	}
	errs, ok := ParseErrors(r.Body)
	if !ok {
		t.Fatalf("%s: not a registry error body: %q", what, r.Body)
	}
	return errs[0].Code
}

// ExpectErrorCode is ExpectError for one status and, but for a HEAD, one code; the answer
// must name the registry API version too, as every registry answer does.
func ExpectErrorCode(t testing.TB, what string, r Response, method string, status int, code string) {
	t.Helper()
	got := ExpectError(t, what, r, method, status)
	if r.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Errorf("%s: no Docker-Distribution-API-Version on the error", what)
	}
	if method != http.MethodHead && got != code {
		t.Fatalf("%s: code %s (%s), want %s", what, got, ErrorOf(t, r).Message, code)
	}
}

// ExpectRateLimited checks a 429 (TOOMANYREQUESTS, for a GET) whose Retry-After is 1 to
// max seconds.
func ExpectRateLimited(t testing.TB, what string, r Response, method string, max int) {
	t.Helper()
	code := ExpectError(t, what, r, method, http.StatusTooManyRequests)
	if method == http.MethodGet && code != "TOOMANYREQUESTS" {
		t.Fatalf("%s: code %s, want TOOMANYREQUESTS", what, code)
	}
	ra, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > max {
		t.Fatalf("%s: Retry-After %q, want 1..%d seconds", what, r.Header.Get("Retry-After"), max)
	}
}
