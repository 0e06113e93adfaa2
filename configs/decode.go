package configs

import (
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// decode fills out from YAML text. It walks the document itself rather than leaning on
// yaml.Unmarshal so that every error can name the key path (upstreams[1].tag_ttl), unknown
// keys are refused, and ${VAR} is expanded in scalar values only: expanding the raw text
// would let a secret containing ": " or "#" rewrite the document.
// Each key path in drop (["cache", "redis"]) is removed from the document first.
func decode(data []byte, out *Config, drop ...[]string) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("config is not valid YAML: %v", err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil // empty file: all defaults
	}
	for _, keys := range drop {
		dropKey(doc.Content[0], keys)
	}
	return decodeNode(doc.Content[0], reflect.ValueOf(out).Elem(), "")
}

// dropKey removes the key path keys from the mapping n, if it is there.
func dropKey(n *yaml.Node, keys []string) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value != keys[0] {
			continue
		}
		if len(keys) == 1 {
			n.Content = append(n.Content[:i:i], n.Content[i+2:]...)
		} else {
			dropKey(n.Content[i+1], keys[1:])
		}
		return
	}
}

// defaulter is a list item whose keys have defaults of their own, set before the file's
// keys are read, so that a key written 0 is told from one left out.
type defaulter interface{ setDefaults() }

var (
	durationType = reflect.TypeOf(Duration(0))
	sizeType     = reflect.TypeOf(Size(0))
	secretType   = reflect.TypeOf(Secret{})
	redisTLSType = reflect.TypeOf(RedisTLS{})
	budgetType   = reflect.TypeOf(Budget{})
	percentType  = reflect.TypeOf(Percent(0))
)

// noEmpty are the keys whose "key:" with no value (its lines commented out, say) would
// quietly mean the opposite of what the file seems to ask.
var noEmpty = map[string]string{
	"tls":            "has no value: give cert_file and key_file, or remove tls: to serve plain HTTP",
	"cache.snapshot": "has no value: give path (and interval), or remove snapshot: to start cold",
}

func decodeNode(n *yaml.Node, v reflect.Value, path string) error {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	where := func(format string, a ...any) error {
		p := path
		if p == "" {
			p = "config"
		}
		return fmt.Errorf("%s: %s (line %d)", p, fmt.Sprintf(format, a...), n.Line)
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		if why := noEmpty[path]; why != "" {
			return where("%s", why)
		}
		return nil // "key:" with no value keeps the default
	}
	switch v.Kind() {
	case reflect.Pointer:
		elem := reflect.New(v.Type().Elem())
		if d, ok := elem.Interface().(defaulter); ok {
			d.setDefaults()
		}
		if err := decodeNode(n, elem.Elem(), path); err != nil {
			return err
		}
		v.Set(elem)
		return nil
	case reflect.Struct:
		if v.Type() == secretType {
			break // a scalar, handled below
		}
		if v.Type() == redisTLSType && n.Kind == yaml.ScalarNode {
			// "tls: true" is the common case; the mapping is for a private CA.
			text, err := expandEnv(n.Value)
			if err != nil {
				return where("%v", err)
			}
			b, err := strconv.ParseBool(text)
			if err != nil {
				return where("%q: write true, false, or a mapping with ca_file, server_name, insecure_skip_verify", text)
			}
			v.Field(0).Set(reflect.ValueOf(&b))
			return nil
		}
		if v.Type() == budgetType && n.Kind == yaml.ScalarNode {
			text, err := expandEnv(n.Value)
			if err != nil {
				return where("%v", err)
			}
			if strings.TrimSpace(text) != "auto" {
				return where("%q: write auto, or a mapping {requests: N, per: DURATION}", text)
			}
			v.Set(reflect.Zero(budgetType))
			return nil
		}
		if n.Kind != yaml.MappingNode {
			return where("expected a mapping of keys")
		}
		fields := map[string]reflect.Value{}
		var names []string
		for i := 0; i < v.NumField(); i++ {
			tag := v.Type().Field(i).Tag.Get("yaml")
			fields[tag] = v.Field(i)
			names = append(names, tag)
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			if seen[key] {
				p := key
				if path != "" {
					p = path + "." + key
				}
				return fmt.Errorf("%s: key appears twice (line %d); keep one", p, n.Content[i].Line)
			}
			seen[key] = true
			f, ok := fields[key]
			sub := key
			if path != "" {
				sub = path + "." + key
			}
			if !ok {
				return fmt.Errorf("%s: unknown key (line %d); known keys here: %s", sub, n.Content[i].Line, strings.Join(names, ", "))
			}
			if err := decodeNode(n.Content[i+1], f, sub); err != nil {
				return err
			}
		}
		return nil
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return where("expected a list")
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			if d, ok := s.Index(i).Addr().Interface().(defaulter); ok {
				d.setDefaults()
			}
			if err := decodeNode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		v.Set(s)
		return nil
	case reflect.Map:
		// Keys of the user's choosing (header names): taken as written, never expanded.
		if n.Kind != yaml.MappingNode {
			return where("expected a mapping")
		}
		m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			sub := path + "." + k.Value
			if k.Kind != yaml.ScalarNode || k.Value == "" {
				return fmt.Errorf("%s: a key must be a plain word (line %d)", path, k.Line)
			}
			if m.MapIndex(reflect.ValueOf(k.Value)).IsValid() {
				return fmt.Errorf("%s: key appears twice (line %d); keep one", sub, k.Line)
			}
			elem := reflect.New(v.Type().Elem()).Elem()
			if err := decodeNode(n.Content[i+1], elem, sub); err != nil {
				return err
			}
			m.SetMapIndex(reflect.ValueOf(k.Value), elem)
		}
		v.Set(m)
		return nil
	}
	if n.Kind != yaml.ScalarNode {
		return where("expected a single value")
	}
	text, err := expandEnv(n.Value)
	if err != nil {
		return where("%v", err)
	}
	switch {
	case v.Type() == durationType:
		d, err := time.ParseDuration(text)
		if err != nil {
			return where("%q is not a duration (write e.g. 10s, 5m, 24h)", text)
		}
		v.SetInt(int64(d))
	case v.Type() == sizeType:
		sz, err := ParseSize(text)
		if err != nil {
			return where("%v", err)
		}
		v.SetInt(int64(sz))
	case v.Type() == secretType:
		v.Set(reflect.ValueOf(NewSecret(text)))
	case v.Type() == percentType:
		p, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(text), "%")))
		if err != nil || p < 0 || p > 100 {
			return where("%q is not a percentage from 0%% to 100%% (write e.g. 50%%)", text)
		}
		v.SetInt(int64(p))
	case v.Kind() == reflect.Int:
		i, err := strconv.Atoi(strings.TrimSpace(text))
		if err != nil {
			return where("%q is not a whole number", text)
		}
		v.SetInt(int64(i))
	case v.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(text)
		if err != nil {
			return where("%q is not true or false", text)
		}
		v.SetBool(b)
	case v.Kind() == reflect.String:
		v.SetString(text)
	default:
		return where("unsupported value type %s", v.Type())
	}
	return nil
}

// ParseSize reads 512KiB, 256MiB, 1GiB, 2TiB (or KB/MB/GB, also powers of 1024, which is
// what people mean in a cache size) or a plain byte count.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (write e.g. 512KiB, 256MiB, 1GiB or a byte count)", s)
	}
	return Size(n * mult), nil
}

// expandEnv replaces ${VAR} and ${VAR:-default}. An unset ${VAR} is an error, because a
// silently empty password would fail much later and far from its cause.
func expandEnv(s string) (string, error) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		b.WriteString(s[:i])
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", fmt.Errorf("unclosed ${ (a literal ${ can only come from an environment variable)")
		}
		expr := s[i+2 : i+end]
		name, def, hasDef := strings.Cut(expr, ":-")
		if name == "" {
			return "", fmt.Errorf("empty variable name in ${%s}", expr)
		}
		val, ok := os.LookupEnv(name)
		switch {
		case ok && val != "":
			b.WriteString(val)
		case hasDef:
			b.WriteString(def)
		case ok:
			// Set but empty: the user chose empty.
		default:
			return "", fmt.Errorf("environment variable %s is not set (set it, or write ${%s:-default})", name, name)
		}
		s = s[i+end+1:]
	}
}
