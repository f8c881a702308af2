package secrets

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/egressd/egressd/internal/atomicfile"
)

// The file is a header followed by the AES-256-GCM sealed payload. The whole header
// is the AEAD's associated data, and the payload is every secret together, so a
// changed byte anywhere, a removed or swapped entry, or a header from another file
// fails authentication.
//
//	magic     "egressd-secrets\n" (16 bytes)
//	version   1 byte, fileVersion
//	algorithm 1 byte, algAES256GCM
//	key id    8 bytes, the first 8 bytes of SHA-256 of the key
//	nonce     12 bytes, fresh from crypto/rand on every write
//	sealed    the rest: ciphertext and tag
const (
	magic        = "egressd-secrets\n"
	fileVersion  = 1
	algAES256GCM = 1
	keyIDLen     = 8
	nonceLen     = 12
	headerLen    = len(magic) + 1 + 1 + keyIDLen + nonceLen
	keyLen       = 32
)

// Key is a 32-byte master key.
type Key struct {
	b  [keyLen]byte
	id [keyIDLen]byte
}

// A Key prints as "<secret>" through every fmt verb, JSON, text marshalling and
// slog, as a Value does: %#v or %d on the struct would otherwise print its bytes.
func (Key) String() string               { return redacted }
func (Key) GoString() string             { return redacted }
func (Key) Format(f fmt.State, _ rune)   { f.Write([]byte(redacted)) }
func (Key) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }
func (Key) MarshalText() ([]byte, error) { return []byte(redacted), nil }
func (Key) LogValue() slog.Value         { return slog.StringValue(redacted) }

// ID names the key without revealing it: the first bytes of its SHA-256, in hex.
func (k Key) ID() string { return hex.EncodeToString(k.id[:]) }

func newKey(b []byte) (Key, error) {
	if len(b) != keyLen {
		return Key{}, fmt.Errorf("a key is %d bytes; this one is %d", keyLen, len(b))
	}
	var k Key
	copy(k.b[:], b)
	sum := sha256.Sum256(k.b[:])
	copy(k.id[:], sum[:keyIDLen])
	return k, nil
}

// GenerateKey returns a new random key.
func GenerateKey() (Key, error) {
	b := make([]byte, keyLen)
	if _, err := rand.Read(b); err != nil {
		return Key{}, err
	}
	return newKey(b)
}

// ParseKey decodes a key written as base64 (the key file's and EGRESSD_SECRETS_KEY's form).
func ParseKey(text string) (Key, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(text))
	if err != nil {
		return Key{}, errors.New("the key is not base64; a key is 32 random bytes in base64, as 'egressd secrets init' writes it")
	}
	return newKey(b)
}

// ReadKeyFile reads a key file. A file that others can read is reported through
// warn, not refused: Kubernetes mounts Secrets 0644 unless told otherwise.
func ReadKeyFile(path string, warn func(msg string)) (Key, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return Key{}, fmt.Errorf("key file: %w", err)
	}
	if !keyModeOK(fi) && warn != nil {
		warn(fmt.Sprintf("key file %s has mode %04o; make it 0600 (or 0440 with egressd's own group, as a Kubernetes Secret with fsGroup gives) so that only egressd can read it", path, fi.Mode().Perm()))
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("key file: %w", err)
	}
	k, err := ParseKey(string(data))
	if err != nil {
		return Key{}, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

// keyModeOK reports whether only egressd can read a key file: no bits for others,
// and group bits only for egressd's own group (a Kubernetes Secret mounted with
// defaultMode 0440 and the pod's fsGroup, which is how a non-root container reads it).
func keyModeOK(fi os.FileInfo) bool {
	perm := fi.Mode().Perm()
	if perm&0o007 != 0 {
		return false
	}
	if perm&0o070 == 0 {
		return true
	}
	gid, ok := fileGID(fi)
	return ok && gid == os.Getegid()
}

// WriteKeyFile writes a new key file, mode 0600. It refuses to overwrite a file.
func WriteKeyFile(path string, k Key) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("key file %s exists; egressd never overwrites a key: choose a new path", path)
		}
		return fmt.Errorf("key file: %w", err)
	}
	if _, err := f.WriteString(base64.StdEncoding.EncodeToString(k.b[:]) + "\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(path))
}

// record is a secret as stored, inside the sealed payload.
type record struct {
	Value   string    `json:"value"`
	Version int64     `json:"version"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	Default bool      `json:"default,omitempty"`
}

// payload is the sealed content: every secret, and a generation that grows by one
// with each write, so that a running egressd notices a file rolled back under it.
type payload struct {
	Generation int64             `json:"generation"`
	Secrets    map[string]record `json:"secrets"`
}

// ErrWrongKey is returned for a file sealed with a key egressd was not given.
var ErrWrongKey = errors.New("the secrets file was sealed with another key")

// seal encrypts p under k into a complete file image.
func seal(k Key, p *payload) ([]byte, error) {
	plain, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	hdr := make([]byte, headerLen)
	copy(hdr, magic)
	hdr[len(magic)] = fileVersion
	hdr[len(magic)+1] = algAES256GCM
	copy(hdr[len(magic)+2:], k.id[:])
	nonce := hdr[len(magic)+2+keyIDLen:]
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	aead, err := gcm(k)
	if err != nil {
		return nil, err
	}
	return aead.Seal(hdr, nonce, plain, hdr), nil
}

// open authenticates and decrypts a file image with whichever of keys sealed it.
func open(data []byte, keys []Key) (*payload, error) {
	if len(data) < headerLen+16 || !bytes.HasPrefix(data, []byte(magic)) {
		return nil, errors.New("not an egressd secrets file, or truncated")
	}
	hdr := data[:headerLen]
	if v := hdr[len(magic)]; v != fileVersion {
		return nil, fmt.Errorf("secrets file format %d; this egressd reads format %d", v, fileVersion)
	}
	if a := hdr[len(magic)+1]; a != algAES256GCM {
		return nil, fmt.Errorf("unknown cipher %d in the secrets file", a)
	}
	id := hdr[len(magic)+2 : len(magic)+2+keyIDLen]
	nonce := hdr[len(magic)+2+keyIDLen:]
	for _, k := range keys {
		if !bytes.Equal(id, k.id[:]) {
			continue
		}
		aead, err := gcm(k)
		if err != nil {
			return nil, err
		}
		plain, err := aead.Open(nil, nonce, data[headerLen:], hdr)
		if err != nil {
			return nil, errors.New("the secrets file fails authentication: it was changed, truncated or corrupted; it is left as it is (the previous version is in the .bak file)")
		}
		var p payload
		if err := json.Unmarshal(plain, &p); err != nil {
			return nil, fmt.Errorf("the secrets file decrypts but does not decode: %w", err)
		}
		if p.Secrets == nil {
			p.Secrets = map[string]record{}
		}
		return &p, nil
	}
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.ID()
	}
	return nil, fmt.Errorf("%w (file key id %s; given %s): set secrets.key_file, or secrets.previous_key_file during a rotation",
		ErrWrongKey, hex.EncodeToString(id), strings.Join(ids, ", "))
}

func gcm(k Key) (cipher.AEAD, error) {
	block, err := aes.NewCipher(k.b[:])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// fileID tells whether the file changed since it was read: a rename gives a new inode.
type fileID struct {
	ino   uint64
	size  int64
	mtime time.Time
}

func statID(path string) (fileID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	return fileID{ino: inode(fi), size: fi.Size(), mtime: fi.ModTime()}, nil
}
