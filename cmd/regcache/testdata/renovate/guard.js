// Preloaded (node -r) before Renovate: every TCP connect, UDP send and DNS query goes to
// loopback or is refused, and each refused attempt is appended to $REGCACHE_GUARD_LOG, which
// the test reads: Renovate must not reach Docker Hub, GitHub or anything else.
'use strict';
const fs = require('fs');
const net = require('net');
const dns = require('dns');
const dgram = require('dgram');

const log = process.env.REGCACHE_GUARD_LOG;
const loopback = new Set(['127.0.0.1', '::1', 'localhost', '::ffff:127.0.0.1']);

function refuse(what) {
  if (log) fs.appendFileSync(log, what + '\n');
  const err = new Error('refused by the loopback guard: ' + what);
  err.code = 'EPERM'; // not a code got retries: a refusal is final
  return err;
}

const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
  // http agents, got and undici call connect with the arguments already normalized.
  const [opts] = Array.isArray(args[0]) ? args[0] : net._normalizeArgs(args);
  if (!opts.path && !loopback.has(opts.host ?? 'localhost')) {
    const err = refuse(`connect ${opts.host}:${opts.port}`);
    process.nextTick(() => this.destroy(err));
    return this;
  }
  return connect.apply(this, args);
};

const dconnect = dgram.Socket.prototype.connect;
dgram.Socket.prototype.connect = function (port, host, cb) {
  if (!loopback.has(typeof host === 'string' ? host : 'localhost')) {
    const err = refuse(`udp connect ${host}:${port}`);
    throw err;
  }
  return dconnect.apply(this, arguments);
};

const send = dgram.Socket.prototype.send;
dgram.Socket.prototype.send = function (...args) {
  const host = args.find((a, i) => i > 0 && typeof a === 'string');
  if (!loopback.has(host ?? 'localhost')) {
    const cb = args.find((a) => typeof a === 'function');
    const err = refuse(`udp ${host}`);
    if (cb) process.nextTick(() => cb(err));
    return;
  }
  return send.apply(this, args);
};

// Names: only loopback ones resolve (a lookup is a packet to a DNS server).
const lookup = dns.lookup;
dns.lookup = function (host, ...rest) {
  const cb = rest[rest.length - 1];
  if (!loopback.has(host)) {
    const err = refuse(`dns ${host}`);
    return process.nextTick(() => cb(err));
  }
  return lookup.call(this, host, ...rest);
};
const plookup = dns.promises.lookup;
dns.promises.lookup = async function (host, ...rest) {
  if (!loopback.has(host)) {
    const err = refuse(`dns ${host}`);
    throw err;
  }
  return plookup.call(this, host, ...rest);
};
for (const proto of [dns.Resolver.prototype, dns.promises.Resolver.prototype]) {
  for (const name of Object.getOwnPropertyNames(proto)) {
    if (!/^(resolve|reverse)/.test(name) || typeof proto[name] !== 'function') continue;
    const orig = proto[name];
    proto[name] = function (host, ...rest) {
      if (loopback.has(host)) return orig.call(this, host, ...rest);
      const err = refuse(`dns ${name} ${host}`);
      const cb = rest[rest.length - 1];
      if (typeof cb === 'function') return process.nextTick(() => cb(err));
      return Promise.reject(err);
    };
  }
}
for (const name of Object.keys(dns)) {
  if (/^(resolve|reverse|lookupService)/.test(name) && typeof dns[name] === 'function') {
    dns[name] = (host, ...rest) => {
      const err = refuse(`dns ${name} ${host}`);
      const cb = rest[rest.length - 1];
      if (typeof cb === 'function') process.nextTick(() => cb(err));
    };
  }
}
// dns.promises' own functions were bound to the default resolver when Node loaded.
for (const name of Object.keys(dns.promises)) {
  if (/^(resolve|reverse|lookupService)/.test(name) && typeof dns.promises[name] === 'function') {
    dns.promises[name] = async (host) => {
      throw refuse(`dns ${name} ${host}`);
    };
  }
}
