package netconf

import "fmt"

// Error is an invalid net-conf.json: Key names the offending key (dotted for
// nested keys, e.g. "Backend.VNI").
type Error struct {
	Key string
	Msg string
}

func (e *Error) Error() string {
	if e.Key == "" {
		return "net-conf.json: " + e.Msg
	}
	return fmt.Sprintf("net-conf.json: %s: %s", e.Key, e.Msg)
}

func configErr(key, format string, args ...any) error {
	return &Error{Key: key, Msg: fmt.Sprintf(format, args...)}
}
