package main

import (
	"crypto/tls"
	"fmt"

	"go.uber.org/zap"

	"regcache/configs"
	"regcache/internal/certfile"
)

// listenTLS is the listener's TLS configuration from tls:, nil without one. The pair is
// re-read on the next handshake after its files change; metrics_listen stays plain HTTP
// (a scraper on an internal port).
func listenTLS(cfg *configs.Config, log *zap.Logger) (*tls.Config, error) {
	if cfg.TLS == nil {
		return nil, nil
	}
	certs, err := certfile.Load(cfg.TLS.CertFile, cfg.TLS.KeyFile, log)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err) // configs checked the pair; it changed since
	}
	return certs.Config(), nil
}
