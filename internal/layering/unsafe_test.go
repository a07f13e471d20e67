package layering

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestUnsafeLivesInUnsafeFiles: a file imports unsafe exactly when its
// name ends in _unsafe.go, so a reviewer finds every unsafe pointer by
// name.
func TestUnsafeLivesInUnsafeFiles(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	root := strings.TrimSpace(string(out))
	seen := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		seen++
		imports := false
		for _, imp := range f.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); p == "unsafe" {
				imports = true
			}
		}
		named := strings.HasSuffix(path, "_unsafe.go") || strings.HasSuffix(path, "_unsafe_test.go")
		rel, _ := filepath.Rel(root, path)
		switch {
		case imports && !named:
			t.Errorf("%s imports unsafe: name it *_unsafe.go or move the unsafe code into one", rel)
		case named && !imports:
			t.Errorf("%s is named _unsafe.go but does not import unsafe", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen == 0 {
		t.Fatal("found no Go files")
	}
}
