package netconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// decodeObject decodes a JSON object into its fields, turning syntax errors
// into messages with line and column.
func decodeObject(key string, data []byte) (map[string]json.RawMessage, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, configErr(key, "empty; want a JSON object")
	}
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&fields); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			line, col := position(data, syn.Offset-1) // Offset is just past the bad byte
			return nil, configErr(key, "JSON syntax error at line %d, column %d: %v", line, col, syn)
		case errors.As(err, &typ):
			return nil, configErr(key, "want a JSON object, got %s", excerpt(data))
		default:
			return nil, configErr(key, "not valid JSON: %v", err)
		}
	}
	if fields == nil {
		return nil, configErr(key, "want a JSON object, got null")
	}
	if dec.More() {
		line, col := position(data, dec.InputOffset())
		return nil, configErr(key, "unexpected data after the JSON object at line %d, column %d", line, col)
	}
	return fields, nil
}

// canonicalKeys maps the fields to their canonical key names, refusing
// unknown keys and keys given twice in different case.
func canonicalKeys(parent string, fields map[string]json.RawMessage, known []string) (map[string]json.RawMessage, error) {
	out := make(map[string]json.RawMessage, len(fields))
	seen := make(map[string]string, len(fields))
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names) // deterministic errors
	for _, k := range names {
		canon := ""
		for _, want := range known {
			if strings.EqualFold(k, want) {
				canon = want
				break
			}
		}
		full := k
		if parent != "" {
			full = parent + "." + k
		}
		if canon == "" {
			return nil, configErr(full, "unknown key (known keys: %s)", strings.Join(known, ", "))
		}
		if prev, dup := seen[canon]; dup {
			return nil, configErr(full, "given twice, as %q and %q", prev, k)
		}
		seen[canon] = k
		out[canon] = fields[k]
	}
	return out, nil
}

// CheckKeys refuses keys of a JSON object that are not in known: backends use
// it so that a misspelt option is an error, not a silently ignored setting.
func CheckKeys(parent string, raw json.RawMessage, known ...string) error {
	fields, err := decodeObject(parent, raw)
	if err != nil {
		return err
	}
	_, err = canonicalKeys(parent, fields, known)
	return err
}

// DecodeBackend decodes a backend's Backend object into opts (which holds the
// defaults), refusing keys not in known ("Type" is always known). Every
// error names the key.
func DecodeBackend(config json.RawMessage, opts any, known ...string) error {
	if len(config) == 0 || string(config) == "null" {
		return nil
	}
	if err := CheckKeys("Backend", config, append([]string{"Type"}, known...)...); err != nil {
		return err
	}
	if err := json.Unmarshal(config, opts); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return &Error{Key: "Backend." + typeErr.Field, Msg: fmt.Sprintf("want %s, got a JSON %s", describeKind(typeErr.Type.Kind()), typeErr.Value)}
		}
		return &Error{Key: "Backend", Msg: err.Error()}
	}
	return nil
}

func describeKind(k reflect.Kind) string {
	switch k {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.String:
		return "a string"
	default:
		return "a " + k.String()
	}
}

func decodeBool(key string, raw json.RawMessage, dst *bool) error {
	if raw == nil {
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return configErr(key, "want true or false, got %s", excerpt(raw))
	}
	return nil
}

// excerpt shows a bad value in an error message, shortened if long.
func excerpt(data []byte) string {
	s := string(bytes.TrimSpace(data))
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return s
}

// position converts a byte offset into a 1-based line and column.
func position(data []byte, offset int64) (line, col int) {
	offset = max(0, min(offset, int64(len(data))))
	before := data[:offset]
	line = bytes.Count(before, []byte("\n")) + 1
	col = int(offset) - bytes.LastIndexByte(before, '\n')
	return line, col
}
