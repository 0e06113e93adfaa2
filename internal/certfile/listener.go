package certfile

import (
	"crypto/tls"
	"net"
	"sync"
)

// Listener is a TLS listener whose Close also closes the connections that have not sent
// their ClientHello. fasthttp runs a connection's handshake before the connection joins
// the idle ones its Shutdown closes, so one that never says a word would hold the shutdown
// until read_timeout, longer than the budget a stop has; Shutdown closes the listener
// first.
type Listener struct {
	net.Listener
	config *tls.Config
	mu     sync.Mutex
	silent map[net.Conn]struct{}
	closed bool
}

// NewListener serves config's TLS on inner's connections.
func NewListener(inner net.Listener, config *tls.Config) *Listener {
	l := &Listener{Listener: inner, silent: map[net.Conn]struct{}{}}
	c := config.Clone()
	next := config.GetConfigForClient
	c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		l.spoke(hello.Conn) // the conn given to tls.Server: the tracked one
		if next != nil {
			return next(hello)
		}
		return nil, nil
	}
	l.config = c
	return l
}

// Accept returns the next connection, as a TLS server connection whose handshake runs on
// its first read or write.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	closed := l.closed
	if !closed {
		l.silent[tc] = struct{}{}
	}
	l.mu.Unlock()
	if closed {
		_ = c.Close()
		return nil, net.ErrClosed
	}
	return tls.Server(tc, l.config), nil
}

// Close stops accepting and closes the connections that have sent no ClientHello yet.
func (l *Listener) Close() error {
	err := l.Listener.Close()
	l.mu.Lock()
	l.closed = true
	conns := make([]net.Conn, 0, len(l.silent))
	for c := range l.silent {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
	return err
}

func (l *Listener) spoke(c net.Conn) {
	l.mu.Lock()
	delete(l.silent, c)
	l.mu.Unlock()
}

// trackedConn leaves the silent set when it closes.
type trackedConn struct {
	net.Conn
	l *Listener
}

func (c *trackedConn) Close() error {
	c.l.spoke(c)
	return c.Conn.Close()
}
