package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// plainWriter is the http.ResponseWriter of a request a plainConn serves. It frames
// the answer by the rules of net/http's server (server.go: response and chunkWriter,
// Go 1.26) for the requests parsePlain lets through (HTTP/1.1, no body), so that the
// client reads what net/http would have written: the same status line, headers in
// the same order, Date and Content-Type added when net/http adds them, a
// Content-Length for a small answer the handler finished without one, chunking
// otherwise, trailers, and "Connection: close" when the connection ends. The
// handler's writes collect in a 2 KiB buffer, as net/http's do, before the header
// is decided. TestPlainWriterAsNetHTTP holds the two side by side.
type plainWriter struct {
	pc     *plainConn
	req    *http.Request
	isHEAD bool

	handlerHeader http.Header // what Header returns
	header        http.Header // the handler's header as WriteHeader found it, once Header was called
	calledHeader  bool
	wroteHeader   bool // a final status has been (logically) written
	status        int
	contentLength int64 // from the handler's Content-Length, or -1
	written       int64
	handlerDone   bool
	hijacked      bool

	closeAfterReply bool
	buf             *bufio.Writer // bufferBeforeChunkingSize, over chunks
	chunks          chunkSink
	trailers        []string // declared by the Trailer header

	dateBuf [len(http.TimeFormat)]byte
	numBuf  [20]byte // status codes and chunk sizes
	clenBuf [20]byte // a Content-Length net/http adds
}

// bufferBeforeChunkingSize is net/http's: answers up to it that the handler
// finishes get a Content-Length.
const bufferBeforeChunkingSize = 2048

// chunkSink is net/http's chunkWriter: the header on the first write, then the
// body, chunked or not.
type chunkSink struct {
	w           *plainWriter
	wroteHeader bool
	chunking    bool
}

func (w *plainWriter) reset(pc *plainConn, r *http.Request) {
	buf := w.buf
	*w = plainWriter{
		pc: pc, req: r, isHEAD: r.Method == http.MethodHead,
		handlerHeader: make(http.Header), contentLength: -1,
		closeAfterReply: r.Close || hasToken(headerGet(r.Header, "Connection"), "close"),
	}
	w.chunks.w = w
	if buf == nil {
		buf = bufio.NewWriterSize(&w.chunks, bufferBeforeChunkingSize)
	}
	buf.Reset(&w.chunks)
	w.buf = buf
}

func (w *plainWriter) Header() http.Header {
	if w.header == nil && w.wroteHeader && !w.chunks.wroteHeader {
		w.header = w.handlerHeader.Clone()
	}
	w.calledHeader = true
	return w.handlerHeader
}

func (w *plainWriter) WriteHeader(code int) {
	if w.hijacked || w.wroteHeader {
		return // net/http logs these and ignores them
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		bw := w.pc.bw
		writeStatusLine(bw, code, w.numBuf[:])
		w.handlerHeader.WriteSubset(bw, excludedHeadersNoBody)
		bw.WriteString("\r\n")
		bw.Flush()
		return
	}
	w.wroteHeader = true
	w.status = code
	if w.calledHeader && w.header == nil {
		w.header = w.handlerHeader.Clone()
	}
	if cl := headerGet(w.handlerHeader, "Content-Length"); cl != "" {
		if v, err := strconv.ParseInt(cl, 10, 64); err == nil && v >= 0 {
			w.contentLength = v
		} else {
			w.handlerHeader.Del("Content-Length")
		}
	}
}

func (w *plainWriter) Write(p []byte) (int, error) { return w.write(len(p), p, "") }

func (w *plainWriter) WriteString(s string) (int, error) { return w.write(len(s), nil, s) }

func (w *plainWriter) write(n int, b []byte, s string) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if n == 0 {
		return 0, nil
	}
	if !bodyAllowedForStatus(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(n)
	if w.contentLength != -1 && w.written > w.contentLength {
		return 0, http.ErrContentLength
	}
	if b != nil {
		return w.buf.Write(b)
	}
	return w.buf.WriteString(s)
}

// ReadFrom copies src as net/http's does over a connection that is not an
// io.ReaderFrom (the accept loop hands net/http a wrapped one): through Write, with
// a pooled 32 KiB buffer.
func (w *plainWriter) ReadFrom(src io.Reader) (int64, error) {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	return io.CopyBuffer(writerOnly{w}, src, *bp)
}

// writerOnly hides ReadFrom from io.CopyBuffer.
type writerOnly struct{ io.Writer }

func (w *plainWriter) Flush() { w.FlushError() }

func (w *plainWriter) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	err := w.buf.Flush()
	if e2 := w.chunks.flush(); err == nil {
		err = e2
	}
	return err
}

// Hijack gives the handler the connection, as net/http's does: what is written is
// flushed, the deadlines cleared, and the connection is no longer the loop's.
func (w *plainWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.handlerDone {
		panic("net/http: Hijack called after ServeHTTP finished")
	}
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.wroteHeader {
		w.chunks.flush()
	}
	pc := w.pc
	if !pc.detach() {
		return nil, nil, net.ErrClosed // a shutdown closed it; the loop ends it
	}
	w.hijacked = true
	pc.p.conns.Add(-1) // as net/http's StateHijacked: counted again by what takes it
	pc.c.SetDeadline(time.Time{})
	pc.bw.Reset(pc.c)
	return pc.c, bufio.NewReadWriter(pc.br, pc.bw), nil
}

// finish ends the answer once the handler has returned, as net/http's
// finishRequest does.
func (w *plainWriter) finish() {
	w.handlerDone = true
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	w.buf.Flush()
	w.chunks.close()
	w.pc.bw.Flush()
}

// reusable reports whether the connection may carry the next request
// (net/http's shouldReuseConnection).
func (w *plainWriter) reusable() bool {
	if w.closeAfterReply || w.pc.werr != nil {
		return false
	}
	return w.isHEAD || w.contentLength == -1 || !bodyAllowedForStatus(w.status) || w.contentLength == w.written
}

func (cw *chunkSink) Write(p []byte) (n int, err error) {
	w := cw.w
	if !cw.wroteHeader {
		cw.writeHeader(p)
	}
	if w.isHEAD {
		return len(p), nil // the body of a HEAD answer is eaten
	}
	bw := w.pc.bw
	if cw.chunking {
		bw.Write(strconv.AppendInt(w.numBuf[:0], int64(len(p)), 16))
		_, err = bw.WriteString("\r\n")
		if err != nil {
			w.pc.c.Close()
			return 0, err
		}
	}
	n, err = bw.Write(p)
	if cw.chunking && err == nil {
		_, err = bw.WriteString("\r\n")
	}
	if err != nil {
		w.pc.c.Close()
	}
	return n, err
}

func (cw *chunkSink) flush() error {
	if !cw.wroteHeader {
		cw.writeHeader(nil)
	}
	return cw.w.pc.bw.Flush()
}

func (cw *chunkSink) close() {
	if !cw.wroteHeader {
		cw.writeHeader(nil)
	}
	if cw.chunking {
		bw := cw.w.pc.bw
		bw.WriteString("0\r\n")
		if t := cw.w.finalTrailers(); t != nil {
			t.Write(bw)
		}
		bw.WriteString("\r\n")
	}
}

// writeHeader writes the status line and header for an answer whose first body
// bytes are p: net/http's chunkWriter.writeHeader for an HTTP/1.1 request without a
// body.
func (cw *chunkSink) writeHeader(p []byte) {
	cw.wroteHeader = true
	w := cw.w
	keepAlives := w.pc.p.ready.Load()

	header := w.header
	owned := header != nil
	if !owned {
		header = w.handlerHeader
	}
	var exclude map[string]bool
	del := func(key string) {
		if owned {
			header.Del(key)
			return
		}
		if _, ok := header[key]; !ok {
			return
		}
		if exclude == nil {
			exclude = make(map[string]bool)
		}
		exclude[key] = true
	}
	var set extraHeader

	trailers := false
	for k := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			if exclude == nil {
				exclude = make(map[string]bool)
			}
			exclude[k] = true
			trailers = true
		}
	}
	for _, v := range w.header["Trailer"] {
		trailers = true
		foreachHeaderElement(v, w.declareTrailer)
	}

	te := headerGet(header, "Transfer-Encoding")
	hasTE := te != ""
	if w.handlerDone && !trailers && !hasTE && bodyAllowedForStatus(w.status) && !headerHas(header, "Content-Length") && (!w.isHEAD || len(p) > 0) {
		w.contentLength = int64(len(p))
		set.contentLength = strconv.AppendInt(w.clenBuf[:0], int64(len(p)), 10)
	}
	hasCL := w.contentLength != -1
	if headerGet(header, "Connection") == "close" || !keepAlives {
		w.closeAfterReply = true
	}

	code := w.status
	if bodyAllowedForStatus(code) {
		_, haveType := header["Content-Type"]
		if header.Get("Content-Encoding") == "" && !haveType && !hasTE && len(p) > 0 {
			set.contentType = http.DetectContentType(p)
		}
	} else {
		for _, k := range suppressedHeaders(code) {
			del(k)
		}
	}
	if !headerHas(header, "Date") {
		set.date = time.Now().UTC().AppendFormat(w.dateBuf[:0], http.TimeFormat)
	}
	if hasCL && hasTE && te != "identity" {
		del("Content-Length")
		hasCL = false
	}
	switch {
	case w.isHEAD || !bodyAllowedForStatus(code) || code == http.StatusNoContent:
		del("Transfer-Encoding")
	case hasCL:
		del("Transfer-Encoding")
	case hasTE && te == "identity":
		cw.chunking = false
		w.closeAfterReply = true
		del("Transfer-Encoding")
	default:
		cw.chunking = true
		set.transferEncoding = "chunked"
		if hasTE && te == "chunked" {
			del("Transfer-Encoding")
		}
	}
	if cw.chunking {
		del("Content-Length")
	}
	if w.closeAfterReply && (!keepAlives || !hasToken(headerGet(w.header, "Connection"), "close")) && !isProtocolSwitch(code, header) {
		del("Connection")
		set.connection = "close"
	}

	bw := w.pc.bw
	writeStatusLine(bw, code, w.numBuf[:])
	w.header.WriteSubset(bw, exclude)
	set.write(bw)
	bw.WriteString("\r\n")
}

func (w *plainWriter) declareTrailer(k string) {
	k = http.CanonicalHeaderKey(k)
	if !httpguts.ValidTrailerHeader(k) {
		return
	}
	w.trailers = append(w.trailers, k)
}

// finalTrailers returns the trailers the handler set, or nil.
func (w *plainWriter) finalTrailers() http.Header {
	var t http.Header
	for k, vv := range w.handlerHeader {
		if kk, found := strings.CutPrefix(k, http.TrailerPrefix); found {
			if t == nil {
				t = make(http.Header)
			}
			t[kk] = vv
		}
	}
	for _, k := range w.trailers {
		if t == nil {
			t = make(http.Header)
		}
		for _, v := range w.handlerHeader[k] {
			t.Add(k, v)
		}
	}
	return t
}

// extraHeader is the headers net/http adds, written in its order.
type extraHeader struct {
	contentType, connection, transferEncoding string
	date, contentLength                       []byte
}

func (h extraHeader) write(bw *bufio.Writer) {
	if h.date != nil {
		bw.WriteString("Date: ")
		bw.Write(h.date)
		bw.WriteString("\r\n")
	}
	if h.contentLength != nil {
		bw.WriteString("Content-Length: ")
		bw.Write(h.contentLength)
		bw.WriteString("\r\n")
	}
	for i, v := range [...]string{h.contentType, h.connection, h.transferEncoding} {
		if v != "" {
			bw.WriteString(extraHeaderKeys[i])
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
}

var extraHeaderKeys = [...]string{"Content-Type", "Connection", "Transfer-Encoding"}

var excludedHeadersNoBody = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}

func writeStatusLine(bw *bufio.Writer, code int, scratch []byte) {
	bw.WriteString("HTTP/1.1 ")
	if text := http.StatusText(code); text != "" {
		bw.Write(strconv.AppendInt(scratch[:0], int64(code), 10))
		bw.WriteByte(' ')
		bw.WriteString(text)
		bw.WriteString("\r\n")
	} else {
		fmt.Fprintf(bw, "%03d status code %d\r\n", code, code)
	}
}

func bodyAllowedForStatus(status int) bool {
	switch {
	case status >= 100 && status <= 199, status == http.StatusNoContent, status == http.StatusNotModified:
		return false
	}
	return true
}

var (
	suppressedHeaders304    = []string{"Content-Type", "Content-Length", "Transfer-Encoding"}
	suppressedHeadersNoBody = []string{"Content-Length", "Transfer-Encoding"}
)

func suppressedHeaders(status int) []string {
	switch {
	case status == http.StatusNotModified:
		return suppressedHeaders304
	case !bodyAllowedForStatus(status):
		return suppressedHeadersNoBody
	}
	return nil
}

// headerGet and headerHas look a canonical key up as it is, as net/http's own
// Header.get and has do.
func headerGet(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func headerHas(h http.Header, key string) bool {
	_, ok := h[key]
	return ok
}

func isProtocolSwitch(code int, h http.Header) bool {
	return code == http.StatusSwitchingProtocols && headerGet(h, "Upgrade") != "" &&
		httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade")
}

func foreachHeaderElement(v string, fn func(string)) {
	v = textproto.TrimString(v)
	if v == "" {
		return
	}
	if !strings.Contains(v, ",") {
		fn(v)
		return
	}
	for f := range strings.SplitSeq(v, ",") {
		if f = textproto.TrimString(f); f != "" {
			fn(f)
		}
	}
}

// hasToken reports whether token appears in v, ASCII case-insensitive, between
// spaces, commas or the ends (net/http's hasToken).
func hasToken(v, token string) bool {
	if len(token) > len(v) || token == "" {
		return false
	}
	if v == token {
		return true
	}
	for sp := 0; sp <= len(v)-len(token); sp++ {
		if b := v[sp]; b != token[0] && b|0x20 != token[0] {
			continue
		}
		if sp > 0 && !isTokenBoundary(v[sp-1]) {
			continue
		}
		if endPos := sp + len(token); endPos != len(v) && !isTokenBoundary(v[endPos]) {
			continue
		}
		if strings.EqualFold(v[sp:sp+len(token)], token) {
			return true
		}
	}
	return false
}

func isTokenBoundary(b byte) bool { return b == ' ' || b == ',' || b == '\t' }
