package nbd

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// ErrBadURI: a string that is not an NBD URI this package can use.
var ErrBadURI = errors.New("nbd: bad NBD URI")

// Address is where an export is: Network and Addr for net.Dial or
// net.Listen ("tcp" and HOST:PORT, or "unix" and a socket path), and the
// export's name ("" for the default export).
type Address struct {
	Network, Addr, Export string
}

// ParseURI parses an NBD URI (NetworkBlockDevice/nbd doc/uri.md):
// nbd://HOST[:PORT][/EXPORT] (port 10809 by default) or
// nbd+unix:///[EXPORT]?socket=PATH. The TLS schemes (nbds, nbds+unix) and
// TLS parameters are refused, there being no TLS here, as are a user name,
// a unix URI with an authority and query parameters it does not know
// (those starting x- excepted, as the document asks).
func ParseURI(s string) (Address, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Address{}, fmt.Errorf("%w %q: %v", ErrBadURI, s, err)
	}
	bad := func(why string, args ...any) (Address, error) {
		return Address{}, fmt.Errorf("%w %q: %s", ErrBadURI, s, fmt.Sprintf(why, args...))
	}
	if u.Opaque != "" || u.Fragment != "" {
		return bad("want nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH")
	}
	if u.User != nil {
		return bad("a user name is for TLS authentication, which is not supported")
	}
	export := strings.TrimPrefix(u.Path, "/")
	if len(export) > maxStringLength || strings.ContainsRune(export, 0) {
		return bad("export name of %d bytes, or with a NUL", len(export))
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad("query: %v", err)
	}
	for k := range q {
		if k != "socket" && !strings.HasPrefix(k, "x-") {
			if strings.HasPrefix(k, "tls-") {
				return bad("parameter %s: TLS is not supported", k)
			}
			return bad("unknown parameter %s", k)
		}
	}
	switch u.Scheme {
	case "nbd":
		if q.Has("socket") {
			return bad("socket is for nbd+unix")
		}
		if u.Host == "" {
			return bad("no host")
		}
		port := u.Port()
		if port == "" {
			port = strconv.Itoa(defaultPort)
		} else if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return bad("port %q", port)
		}
		return Address{Network: "tcp", Addr: net.JoinHostPort(u.Hostname(), port), Export: export}, nil
	case "nbd+unix":
		if u.Host != "" {
			return bad("a unix socket URI has no host: nbd+unix:///EXPORT?socket=PATH")
		}
		sock := q.Get("socket")
		if sock == "" || len(q["socket"]) != 1 {
			return bad("want one socket=PATH")
		}
		return Address{Network: "unix", Addr: sock, Export: export}, nil
	case "nbds", "nbds+unix":
		return bad("TLS is not supported")
	}
	return bad("scheme %q, want nbd or nbd+unix", u.Scheme)
}

// String is the address as an NBD URI.
func (a Address) String() string {
	u := url.URL{Path: "/" + a.Export}
	switch a.Network {
	case "unix":
		u.Scheme = "nbd+unix"
		u.RawQuery = url.Values{"socket": {a.Addr}}.Encode()
	default:
		u.Scheme, u.Host = "nbd", a.Addr
	}
	return u.String()
}
