package configs

import (
	"fmt"
	"time"

	"github.com/valyala/fasthttp"

	"regcache/proxy"
)

// Server is the client-facing side's limits. Every abusive client hits one of them: a
// slow or idle connection is cut by the timeouts, an oversized header or body is refused
// before the handler runs, and one address cannot hold every connection.
type Server struct {
	// ReadTimeout bounds reading one whole request (headers and body) from its first byte,
	// and a new connection's wait for that byte, so a client that trickles a header
	// (slowloris) or sends nothing is cut when it passes.
	ReadTimeout Duration `yaml:"read_timeout"`
	// WriteTimeout bounds writing one whole response. Large blobs stream through, so it is
	// long; a stalled upstream is cut by the upstream's own idle timeout.
	WriteTimeout Duration `yaml:"write_timeout"`
	// IdleTimeout is how long a keep-alive connection may wait for its next request.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// MaxHeaderSize is the largest request line plus headers; larger requests are answered
	// 431. Each open connection may hold a buffer this large.
	MaxHeaderSize Size `yaml:"max_header_size"`
	// MaxConnsPerIP caps simultaneous connections from one client address; 0 is unlimited.
	MaxConnsPerIP int `yaml:"max_conns_per_ip"`
	// Concurrency caps connections served at once; 0 is fasthttp.DefaultConcurrency.
	Concurrency int `yaml:"concurrency"`
	// MaxRequestBody is the largest request body (only POST /api/v1/digests reads one);
	// larger bodies are answered 413 without being read.
	MaxRequestBody Size `yaml:"max_request_body"`
}

// Server bounds (the defaults are proxy's, see defaults).
const (
	// minMaxHeaderSize leaves room for a registry request with a long bearer token;
	// maxMaxHeaderSize keeps the per-connection buffer (times thousands of connections) sane.
	minMaxHeaderSize = 4 << 10
	maxMaxHeaderSize = 1 << 20
	// The batch digest API takes at most 1,000 references, well under 1 MiB; a body is held
	// in memory whole, so it is bounded.
	minMaxRequestBody = 1 << 10
	maxMaxRequestBody = 64 << 20
)

func (s *Server) validate() error {
	for _, d := range []struct {
		key string
		v   Duration
		eg  time.Duration
	}{
		{"server.read_timeout", s.ReadTimeout, proxy.DefaultReadTimeout},
		{"server.write_timeout", s.WriteTimeout, proxy.DefaultWriteTimeout},
		{"server.idle_timeout", s.IdleTimeout, proxy.DefaultIdleTimeout},
	} {
		if d.v <= 0 {
			// fasthttp reads 0 as "no timeout": exactly what a slow client wants.
			return fmt.Errorf("%s: must be above zero (e.g. %s); no limit would let slow clients hold connections forever", d.key, durationText(d.eg))
		}
	}
	if s.MaxHeaderSize < minMaxHeaderSize || s.MaxHeaderSize > maxMaxHeaderSize {
		return fmt.Errorf("server.max_header_size: must be between %s and %s (e.g. %s); each connection may hold a buffer this large",
			sizeText(minMaxHeaderSize), sizeText(maxMaxHeaderSize), sizeText(proxy.DefaultMaxHeaderSize))
	}
	if s.MaxRequestBody < minMaxRequestBody || s.MaxRequestBody > maxMaxRequestBody {
		return fmt.Errorf("server.max_request_body: must be between %s and %s (e.g. %s); a body is held in memory whole",
			sizeText(minMaxRequestBody), sizeText(maxMaxRequestBody), sizeText(proxy.DefaultMaxRequestBody))
	}
	if s.MaxConnsPerIP < 0 {
		return fmt.Errorf("server.max_conns_per_ip: must not be negative (0 is unlimited)")
	}
	if s.Concurrency < 0 {
		return fmt.Errorf("server.concurrency: must not be negative (0 is the default, %d)", fasthttp.DefaultConcurrency)
	}
	return nil
}
