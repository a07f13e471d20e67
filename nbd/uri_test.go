package nbd

import (
	"errors"
	"testing"
)

// TestParseURI: the examples of doc/uri.md and the URIs nvblk's flags
// take, and what is refused.
func TestParseURI(t *testing.T) {
	for _, tc := range []struct {
		uri  string
		want Address
		bad  bool
	}{
		{uri: "nbd://example.com:10809/export", want: Address{"tcp", "example.com:10809", "export"}},
		{uri: "nbd://example.com/disk", want: Address{"tcp", "example.com:10809", "disk"}},
		{uri: "nbd://example.com/", want: Address{"tcp", "example.com:10809", ""}},
		{uri: "nbd://example.com", want: Address{"tcp", "example.com:10809", ""}},
		{uri: "nbd://example.com//disk", want: Address{"tcp", "example.com:10809", "/disk"}},
		{uri: "nbd://example.com/hello%20world", want: Address{"tcp", "example.com:10809", "hello world"}},
		{uri: "nbd://[::1]:4000/vda", want: Address{"tcp", "[::1]:4000", "vda"}},
		{uri: "nbd://:10810", want: Address{"tcp", ":10810", ""}},
		{uri: "nbd+unix:///disk?socket=nbd.sock", want: Address{"unix", "nbd.sock", "disk"}},
		{uri: "nbd+unix:///?socket=/run/nvblk/in.sock", want: Address{"unix", "/run/nvblk/in.sock", ""}},
		{uri: "nbd+unix:///?socket=/tmp/a%20b.sock&x-debug=1", want: Address{"unix", "/tmp/a b.sock", ""}},
		{uri: "nbds://example.com/disk", bad: true},
		{uri: "nbds+unix:///disk?socket=s", bad: true},
		{uri: "nbd://example.com/disk?tls-type=x509", bad: true},
		{uri: "nbd://user@example.com/disk", bad: true},
		{uri: "nbd://example.com:0/disk", bad: true},
		{uri: "nbd://example.com:70000/disk", bad: true},
		{uri: "nbd:///disk", bad: true},
		{uri: "nbd://example.com/disk?socket=s", bad: true},
		{uri: "nbd://example.com/disk?cache=none", bad: true},
		{uri: "nbd+unix:///disk", bad: true},
		{uri: "nbd+unix:///disk?socket=", bad: true},
		{uri: "nbd+unix:///disk?socket=a&socket=b", bad: true},
		{uri: "nbd+unix://host/disk?socket=s", bad: true},
		{uri: "nbd://example.com/a%00b", bad: true},
		{uri: "nbd://example.com/disk#frag", bad: true},
		{uri: "http://example.com/disk", bad: true},
		{uri: "/tmp/nbd.sock", bad: true},
		{uri: "nbd:example.com", bad: true},
	} {
		t.Run(tc.uri, func(t *testing.T) {
			got, err := ParseURI(tc.uri)
			if tc.bad {
				if !errors.Is(err, ErrBadURI) {
					t.Fatalf("ParseURI = %+v, %v; want ErrBadURI", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseURI = %+v, %v; want %+v", got, err, tc.want)
			}
			// The address's URI parses back to it.
			if again, err := ParseURI(got.String()); err != nil || again != got {
				t.Fatalf("ParseURI(%q) = %+v, %v; want %+v", got.String(), again, err, got)
			}
		})
	}
}

// FuzzParseURI: any string parses or is refused with ErrBadURI, and an
// address it returns survives its own URI.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{"nbd://example.com:10809/export", "nbd+unix:///disk?socket=nbd.sock",
		"nbd://[::1]/a%20b", "nbds://x", "nbd+unix:///?socket=%00/abstract&x-y=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseURI(s)
		if err != nil {
			if !errors.Is(err, ErrBadURI) {
				t.Fatalf("ParseURI(%q): %v, not ErrBadURI", s, err)
			}
			return
		}
		if again, err := ParseURI(a.String()); err != nil || again != a {
			t.Fatalf("ParseURI(%q) = %+v; its URI %q parses to %+v, %v", s, a, a.String(), again, err)
		}
	})
}
