package configs

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// ReadHtpasswd reads an htpasswd file into user -> bcrypt hash. Only bcrypt entries
// (htpasswd -B: $2y$, $2a$, $2b$) are accepted: the other formats htpasswd writes (MD5-crypt,
// SHA-1, crypt, plain text) are too cheap to brute-force. Errors name the line and the user
// but never echo a hash, since a "hash" may be a plain-text password.
func ReadHtpasswd(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseHtpasswd(path, data)
}

// ParseHtpasswd parses htpasswd text; name is used in errors. Blank lines and lines starting
// with # are skipped.
func ParseHtpasswd(name string, data []byte) (map[string]string, error) {
	users := map[string]string{}
	for i, raw := range bytes.Split(data, []byte("\n")) {
		line := strings.TrimSpace(string(raw)) // also drops the \r of CRLF files
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		where := fmt.Sprintf("%s line %d", name, i+1)
		user, hash, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("%s: want user:hash", where)
		}
		if user == "" {
			return nil, fmt.Errorf("%s: empty user name", where)
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("%s: user %q appears twice; keep one", where, user)
		}
		if !strings.HasPrefix(hash, "$2") {
			return nil, fmt.Errorf("%s: user %q: not a bcrypt hash; regcache accepts bcrypt only (create it with htpasswd -B)", where, user)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("%s: user %q: malformed bcrypt hash (create it with htpasswd -B)", where, user)
		}
		users[user] = hash
	}
	if len(users) == 0 {
		return nil, fmt.Errorf("%s holds no users (add lines with htpasswd -B %s USER)", name, name)
	}
	return users, nil
}
