package registrytest

import (
	"net/http"
	"sync"
)

// OnMethod restricts f to requests with method (GET, HEAD); others pass.
func OnMethod(method string, f Fault) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		return r.Method == method && f(w, r)
	}
}

// Times lets f handle at most n requests; after that every request passes to the
// registry. Requests f declines do not count. Calls to f are serialized until n is spent,
// so that concurrent requests cannot both be the last one.
func Times(n int, f Fault) Fault {
	var mu sync.Mutex
	left := n
	return func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		if left <= 0 {
			return false
		}
		if !f(w, r) {
			return false
		}
		left--
		return true
	}
}

// Once is Times(1, f): a fault that fires for the first request it handles, then never.
func Once(f Fault) Fault { return Times(1, f) }

// WithHeaders adds header pairs (name, value, name, value, ...) to every answer and lets
// the registry (or a later fault in a Chain) answer: Docker Hub's RateLimit-* headers on
// ordinary answers, for one.
func WithHeaders(pairs ...string) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		for i := 0; i+1 < len(pairs); i += 2 {
			w.Header().Add(pairs[i], pairs[i+1])
		}
		return false
	}
}

// Chain offers a request to each fault in turn; the first that handles it answers.
func Chain(fs ...Fault) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		for _, f := range fs {
			if f != nil && f(w, r) {
				return true
			}
		}
		return false
	}
}
