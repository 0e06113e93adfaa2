// Package harness is what every end-to-end test of regcache stands on, so that each test
// says only what it proves: regcache started from a YAML config on 127.0.0.1 (in process,
// or as its own process where a test needs signals, flags or exit codes; over HTTPS
// with a test CA where the test asks, NewTLS), requests sent
// through Go's client or byte for byte over TCP, bursts of clients released at once,
// registry error bodies read, a dialer that lets regcache reach 127.0.0.1 only, /metrics
// scraped, the requests that reached a test registry recorded, and the checks of
// regcache's answers that many tests make.
//
// The registries behind regcache come from upstream/registrytest, Redis from
// cache/redistest; both serve the packages' own tests too. Only tests import this package.
package harness
