package registrytest

import (
	"io"
	"log"
	"net/http"
	"strconv"
	"strings"
	"time"
)

func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// OnManifests restricts f to manifest requests; tokens and other endpoints pass.
func OnManifests(f Fault) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		return strings.Contains(r.URL.Path, "/manifests/") && f(w, r)
	}
}

// Status answers every request with code and a registry error body.
func Status(code int) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = io.WriteString(w, `{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}`)
		return true
	}
}

// RateLimited answers 429 with Retry-After (omitted when retryAfter is 0).
func RateLimited(retryAfter time.Duration) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(retryAfter/time.Second)))
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = io.WriteString(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}`)
		return true
	}
}

// CloseConnection drops the TCP connection without answering.
func CloseConnection() Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		hj, ok := w.(http.Hijacker)
		if !ok {
			panic("registrytest: ResponseWriter cannot hijack")
		}
		conn, _, err := hj.Hijack()
		if err == nil {
			_ = conn.Close()
		}
		return true
	}
}

// Delay holds every request for d, then lets the registry answer.
func Delay(d time.Duration) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
		}
		return false
	}
}

// Serve answers manifest GETs and HEADs with the given headers and body, whatever was
// asked: a lying or oversized upstream.
func Serve(contentType, dockerContentDigest string, body []byte) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Type", contentType)
		if dockerContentDigest != "" {
			w.Header().Set("Docker-Content-Digest", dockerContentDigest)
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			_, _ = w.Write(body)
		}
		return true
	}
}

// StripDigestOnHead forwards to the registry but drops Docker-Content-Digest from HEAD
// answers, like registries that make clients hash the body.
func (r *Registry) StripDigestOnHead() Fault {
	return func(w http.ResponseWriter, req *http.Request) bool {
		if req.Method != http.MethodHead || !strings.Contains(req.URL.Path, "/manifests/") || !r.authorized(req) {
			return false
		}
		r.inner.ServeHTTP(stripDigest{w}, req)
		return true
	}
}

type stripDigest struct{ http.ResponseWriter }

func (s stripDigest) WriteHeader(code int) {
	s.Header().Del("Docker-Content-Digest")
	s.ResponseWriter.WriteHeader(code)
}
