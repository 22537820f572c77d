package rules

import (
	"fmt"
	"strings"
)

// splitRule splits one line of `iptables -S` / iptables-save output into its
// arguments. iptables quotes an argument that holds spaces or quotes with
// double quotes and escapes `"` and `\` inside it with a backslash.
func splitRule(line string) ([]string, error) {
	var (
		args    []string
		cur     strings.Builder
		inArg   bool
		inQuote bool
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case inQuote && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			inQuote = !inQuote
			inArg = true
		case !inQuote && (c == ' ' || c == '\t'):
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unterminated quote in iptables rule %q", line)
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}

// joinRule formats arguments as one iptables-restore line, quoting where
// iptables-restore's own parser needs it.
func joinRule(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		if a != "" && !strings.ContainsAny(a, " \t\"\\'") {
			b.WriteString(a)
			continue
		}
		b.WriteByte('"')
		for j := 0; j < len(a); j++ {
			if a[j] == '"' || a[j] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(a[j])
		}
		b.WriteByte('"')
	}
	return b.String()
}

// jumpsTo reports whether rule args send packets to chain (-j or -g).
func jumpsTo(args []string, chain string) bool {
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-j", "--jump", "-g", "--goto":
			if args[i+1] == chain {
				return true
			}
		}
	}
	return false
}
