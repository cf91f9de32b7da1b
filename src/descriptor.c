// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * DiskDescriptor.xml: parse, validate, build, edit and store the list of
 * deltas of an image directory and the snapshot tree that links them
 * (ploop-image(5), "DESCRIPTOR"; ploop-format.md section 2).
 *
 * The descriptor is untrusted input that decides which files we open, so
 * everything in it is checked here before anybody uses it: libxml2 never
 * loads a DTD, never touches the network and never sees a DOCTYPE at all
 * (we stop the parser at the declaration, so entity tricks such as
 * "billion laughs" or external entities cannot happen); element text is
 * taken only from text nodes, never by expanding entity references;
 * numbers are plain decimal with overflow checks; file names must be plain
 * names inside the image directory.
 *
 * What is read is also kept: ploop writes elements we do not model
 * (<Encryption><KeyId>, without which an encrypted image cannot be
 * opened, <Preallocated>, <Max_delta_size>, ...), and a rewrite must not
 * lose them.  A parsed struct pf_dd holds its document (struct
 * pf_dd_xml); pf_dd_format() edits a copy of it to match the fields, and
 * each image and shot knows its element by position (xml_pos), so that
 * the edits, which only rename, remove and append, need not touch XML.
 *
 * Invariants of a struct pf_dd returned by pf_dd_parse() or pf_dd_new():
 *   - 0 < disk_size_sectors, and disk_size_sectors * 512 fits in 64 bits;
 *   - blocksize * 512 passes pf_cluster_size_valid();
 *   - 1 <= n_images <= PF_MAX_DELTAS, image GUIDs and files are unique,
 *     every file passes pf_dd_file_name_valid();
 *   - n_shots == n_images and each shot has the image of the same GUID;
 *   - all GUIDs are lower case; every ParentGUID is PF_NONE_GUID or names
 *     a shot; no shot is its own ancestor;
 *   - top_guid names a shot that is not temporary;
 *   - a non-zero xml_pos is unique among the images (the shots) and at
 *     most the number of <Image> (<Shot>) elements of xml's document.
 */
#include "descriptor.h"
#include "descriptor_i.h"

#include <ctype.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlstring.h>
#include <uuid/uuid.h>

#include "format.h"

#define ROOT_VZ		"Virtuozzo_disk_image"
#define ROOT_PRL	"Parallels_disk_image"

static int xml_error(struct pf_why *why, xmlParserCtxtPtr ctxt)
{
	static const char deep[] = "Excessive depth in document: ";
	const xmlError *e = xmlCtxtGetLastError(ctxt);
	char msg[160] = "unknown error";
	int line = e ? e->line : 0;
	unsigned long depth;
	size_t n;
	char *end;

	if (e && e->message) {
		snprintf(msg, sizeof(msg), "%s", e->message);
		/* libxml2 ends its messages with a newline; we want one line */
		n = strlen(msg);
		while (n && isspace((unsigned char)msg[n - 1]))
			msg[--n] = '\0';
	}
	/*
	 * A limit of the parser, whose message advises a parser option
	 * ("use XML_PARSE_HUGE option") that means nothing to a user and
	 * that we will not set (it lifts the limits against hostile
	 * input): say it in our own words.
	 */
	if (strstr(msg, "XML_PARSE_HUGE")) {
		if (!strncmp(msg, deep, sizeof(deep) - 1)) {
			depth = strtoul(msg + sizeof(deep) - 1, &end, 10);
			if (end != msg + sizeof(deep) - 1)
				return pf_why_set(why, -EINVAL,
						  "descriptor too deep at line %d: elements nested more than %lu levels",
						  line, depth);
		}
		return pf_why_set(why, -EINVAL,
				  "descriptor too large at line %d: beyond a limit of the XML parser",
				  line);
	}
	return pf_why_set(why, -EINVAL, "not well-formed XML at line %d: %s",
			  line, msg);
}

/* GUIDs and file names */

bool pf_guid_valid(const char *s)
{
	size_t i;

	if (!s || strlen(s) != PF_GUID_LEN || s[0] != '{' ||
	    s[PF_GUID_LEN - 1] != '}')
		return false;
	for (i = 1; i < PF_GUID_LEN - 1; i++) {
		/* "{" then 8-4-4-4-12: dashes at offsets 9, 14, 19 and 24 */
		if (i == 9 || i == 14 || i == 19 || i == 24) {
			if (s[i] != '-')
				return false;
		} else if (!isxdigit((unsigned char)s[i])) {
			return false;
		}
	}
	return true;
}

static void guid_lower(char *dst, const char *src)
{
	size_t i;

	for (i = 0; i < PF_GUID_LEN; i++)
		dst[i] = (char)tolower((unsigned char)src[i]);
	dst[PF_GUID_LEN] = '\0';
}

int pf_guid_canon(const char *in, char out[PF_GUID_LEN + 1])
{
	char g[PF_GUID_LEN + 1];
	size_t n = in ? strlen(in) : 0;

	out[0] = '\0';
	if (n == PF_GUID_LEN) {
		memcpy(g, in, n + 1);
	} else if (n == PF_GUID_LEN - 2 && in[0] != '{') {
		g[0] = '{';
		memcpy(g + 1, in, n);
		g[PF_GUID_LEN - 1] = '}';
		g[PF_GUID_LEN] = '\0';
	} else {
		return -EINVAL;
	}
	if (!pf_guid_valid(g))
		return -EINVAL;
	guid_lower(out, g);
	return 0;
}

void pf_guid_new(char *out)
{
	uuid_t u;
	char s[37];

	uuid_generate(u);
	uuid_unparse_lower(u, s);
	out[0] = '{';
	memcpy(out + 1, s, 36);
	out[PF_GUID_LEN - 1] = '}';
	out[PF_GUID_LEN] = '\0';
}

/*
 * Why @name is not acceptable as a delta file name, or NULL.  The name is
 * later given to openat() relative to the image directory, so it must not
 * be able to leave it; control characters and bad UTF-8 are refused so
 * that the name survives a round trip through XML.
 */
static const char *file_name_problem(const char *name)
{
	size_t n = strlen(name);
	const char *p;

	if (n == 0)
		return "is empty";
	if (name[0] == '/')
		return "is an absolute path";
	if (!strcmp(name, ".") || !strcmp(name, ".."))
		return "is not a file name";
	if (!strncmp(name, "../", 3) || strstr(name, "/../") ||
	    (n >= 3 && !strcmp(name + n - 3, "/..")))
		return "escapes the image directory";
	if (strchr(name, '/'))
		return "contains '/' (must be a plain name in the image directory)";
	if (n > NAME_MAX)
		return "is longer than NAME_MAX";
	for (p = name; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return "contains a control character";
	if (!xmlCheckUTF8((const xmlChar *)name))
		return "is not valid UTF-8";
	return NULL;
}

bool pf_dd_file_name_valid(const char *name)
{
	return name && !file_name_problem(name);
}

/* Reading elements */

static bool name_is(const xmlNode *n, const char *name)
{
	return n->type == XML_ELEMENT_NODE &&
	       !strcmp((const char *)n->name, name);
}

/* The only child element @name of @parent, or *out = NULL if none. */
static int child_opt(const xmlNode *parent, const char *name,
		     const xmlNode **out, struct pf_why *why)
{
	const xmlNode *c;

	*out = NULL;
	for (c = parent->children; c; c = c->next) {
		if (!name_is(c, name))
			continue;
		/* two values would leave us guessing which one ploop used */
		if (*out)
			return pf_why_set(why, -EINVAL,
					  "<%s> appears more than once in <%s>",
					  name, (const char *)parent->name);
		*out = c;
	}
	return 0;
}

static int child_req(const xmlNode *parent, const char *name,
		     const xmlNode **out, struct pf_why *why)
{
	int ret = child_opt(parent, name, out, why);

	if (ret)
		return ret;
	if (!*out)
		return pf_why_set(why, -EINVAL, "<%s> has no <%s>",
				  (const char *)parent->name, name);
	return 0;
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/*
 * The text of element @e with surrounding whitespace trimmed, malloc'ed.
 * Only text and CDATA nodes count.  An entity reference is refused rather
 * than expanded: expansion is exactly what entity attacks rely on, and
 * ploop never writes one.
 */
static int node_text(const xmlNode *e, char **out, struct pf_why *why)
{
	const xmlNode *c;
	size_t len = 0, l;
	char *s, *p, *start;

	*out = NULL;
	for (c = e->children; c; c = c->next) {
		switch (c->type) {
		case XML_TEXT_NODE:
		case XML_CDATA_SECTION_NODE:
			if (c->content)
				len += strlen((const char *)c->content);
			break;
		case XML_COMMENT_NODE:
		case XML_PI_NODE:
			break;
		case XML_ENTITY_REF_NODE:
			return pf_why_set(why, -EINVAL,
					  "<%s> contains the entity reference &%s;",
					  (const char *)e->name,
					  (const char *)c->name);
		default:
			return pf_why_set(why, -EINVAL,
					  "<%s> contains markup where a value is expected",
					  (const char *)e->name);
		}
	}

	s = calloc(len + 1, 1);
	if (!s)
		return -ENOMEM;
	p = s;
	for (c = e->children; c; c = c->next) {
		if ((c->type == XML_TEXT_NODE ||
		     c->type == XML_CDATA_SECTION_NODE) && c->content) {
			l = strlen((const char *)c->content);
			if (l > len - (size_t)(p - s))	/* cannot happen */
				l = len - (size_t)(p - s);
			memcpy(p, c->content, l);
			p += l;
		}
	}
	*p = '\0';

	while (p > s && is_blank(p[-1]))
		*--p = '\0';
	for (start = s; is_blank(*start); start++)
		;
	if (start != s)
		memmove(s, start, strlen(start) + 1);
	*out = s;
	return 0;
}

/* Decimal only: no sign, no base prefix, no spaces inside, no overflow. */
static int parse_u64(const char *elem, const char *s, uint64_t max,
		     uint64_t *out, struct pf_why *why)
{
	char buf[SHOW_MAX];
	uint64_t v = 0;
	const char *p;

	if (!*s)
		return pf_why_set(why, -EINVAL, "<%s> is empty", elem);
	for (p = s; *p; p++) {
		unsigned d;

		if (*p < '0' || *p > '9')
			return pf_why_set(why, -EINVAL,
					  "<%s> \"%s\" is not a number", elem,
					  dd_show(s, buf, sizeof(buf)));
		d = (unsigned)(*p - '0');
		if (v > (max - d) / 10)
			return pf_why_set(why, -EINVAL,
					  "<%s> \"%s\" is out of range (max %" PRIu64 ")",
					  elem, dd_show(s, buf, sizeof(buf)), max);
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

static int child_u64(const xmlNode *parent, const char *name, uint64_t max,
		     uint64_t *out, struct pf_why *why)
{
	const xmlNode *e;
	char *s;
	int ret;

	ret = child_req(parent, name, &e, why);
	if (ret)
		return ret;
	ret = node_text(e, &s, why);
	if (ret)
		return ret;
	ret = parse_u64(name, s, max, out, why);
	free(s);
	return ret;
}

static int child_u32(const xmlNode *parent, const char *name, uint32_t *out,
		     struct pf_why *why)
{
	uint64_t v;
	int ret = child_u64(parent, name, UINT32_MAX, &v, why);

	if (!ret)
		*out = (uint32_t)v;
	return ret;
}

/* The GUID in element @e, stored in lower case into @out. */
static int guid_text(const xmlNode *e, char *out, struct pf_why *why)
{
	char buf[SHOW_MAX];
	char *s;
	int ret;

	ret = node_text(e, &s, why);
	if (ret)
		return ret;
	if (!pf_guid_valid(s))
		ret = pf_why_set(why, -EINVAL, "<%s> \"%s\" is not a GUID",
				 (const char *)e->name,
				 dd_show(s, buf, sizeof(buf)));
	else
		guid_lower(out, s);
	free(s);
	return ret;
}

static int child_guid(const xmlNode *parent, const char *name, char *out,
		      struct pf_why *why)
{
	const xmlNode *e;
	int ret = child_req(parent, name, &e, why);

	return ret ? ret : guid_text(e, out, why);
}

static size_t count_children(const xmlNode *parent, const char *name)
{
	const xmlNode *c;
	size_t n = 0;

	for (c = parent->children; c; c = c->next)
		if (name_is(c, name))
			n++;
	return n;
}

/* Parsing the sections */

static int parse_disk_params(const xmlNode *root, struct pf_dd *dd,
			     struct pf_why *why)
{
	const xmlNode *dp, *pad;
	uint64_t v;
	char *s;
	int ret;

	ret = child_req(root, "Disk_Parameters", &dp, why);
	if (ret)
		return ret;
	/* the byte size must fit in 64 bits for every later computation */
	ret = child_u64(dp, "Disk_size", UINT64_MAX >> PF_SECTOR_SHIFT,
			&dd->disk_size_sectors, why);
	if (ret)
		return ret;
	if (dd->disk_size_sectors == 0)
		return pf_why_set(why, -EINVAL, "<Disk_size> is 0");
	ret = child_u32(dp, "Cylinders", &dd->cylinders, why);
	if (!ret)
		ret = child_u32(dp, "Heads", &dd->heads, why);
	if (!ret)
		ret = child_u32(dp, "Sectors", &dd->sectors, why);
	if (ret)
		return ret;

	/* Padding is optional and always written as 0; only check its form */
	ret = child_opt(dp, "Padding", &pad, why);
	if (ret || !pad)
		return ret;
	ret = node_text(pad, &s, why);
	if (ret)
		return ret;
	ret = parse_u64("Padding", s, UINT64_MAX, &v, why);
	free(s);
	return ret;
}

static int parse_image(const xmlNode *e, struct pf_dd_image *img,
		       struct pf_why *why)
{
	const xmlNode *type, *file;
	const char *problem;
	char buf[SHOW_MAX];
	char *s;
	int ret;

	ret = child_guid(e, "GUID", img->guid, why);
	if (ret)
		return ret;
	if (!strcmp(img->guid, PF_NONE_GUID))
		return pf_why_set(why, -EINVAL,
				  "<GUID> of an image is the null GUID");

	ret = child_opt(e, "Type", &type, why);
	if (ret)
		return ret;
	if (!type)
		return pf_why_set(why, -EINVAL, "<Image> %s has no <Type>",
				  img->guid);
	ret = node_text(type, &s, why);
	if (ret)
		return ret;
	if (!strcmp(s, "Plain"))
		ret = pf_why_set(why, -EINVAL,
				 "<Type> \"Plain\" of image %s: raw base images are not supported",
				 img->guid);
	else if (strcmp(s, "Compressed") != 0)
		ret = pf_why_set(why, -EINVAL,
				 "<Type> \"%s\" of image %s is not Compressed",
				 dd_show(s, buf, sizeof(buf)), img->guid);
	free(s);
	if (ret)
		return ret;

	ret = child_opt(e, "File", &file, why);
	if (ret)
		return ret;
	if (!file)
		return pf_why_set(why, -EINVAL, "<Image> %s has no <File>",
				  img->guid);
	ret = node_text(file, &s, why);
	if (ret)
		return ret;
	problem = file_name_problem(s);
	if (problem) {
		ret = pf_why_set(why, -EINVAL, "<File> \"%s\" of image %s %s",
				 dd_show(s, buf, sizeof(buf)), img->guid, problem);
		free(s);
		return ret;
	}
	img->file = s;
	return 0;
}

static int parse_storage(const xmlNode *root, struct pf_dd *dd,
			 struct pf_why *why)
{
	const xmlNode *sd, *st, *c;
	uint64_t start, end;
	size_t n;
	int ret;

	ret = child_req(root, "StorageData", &sd, why);
	if (ret)
		return ret;
	n = count_children(sd, "Storage");
	/* split images (several <Storage> ranges) are not supported */
	if (n != 1)
		return pf_why_set(why, -EINVAL,
				  "<StorageData> has %zu <Storage> elements, expected exactly one",
				  n);
	ret = child_req(sd, "Storage", &st, why);
	if (ret)
		return ret;

	ret = child_u64(st, "Start", UINT64_MAX, &start, why);
	if (ret)
		return ret;
	if (start != 0)
		return pf_why_set(why, -EINVAL,
				  "<Start> %" PRIu64 " is not 0", start);
	ret = child_u64(st, "End", UINT64_MAX, &end, why);
	if (ret)
		return ret;
	if (end != dd->disk_size_sectors)
		return pf_why_set(why, -EINVAL,
				  "<End> %" PRIu64 " differs from <Disk_size> %" PRIu64,
				  end, dd->disk_size_sectors);
	ret = child_u32(st, "Blocksize", &dd->blocksize, why);
	if (ret)
		return ret;
	if (!pf_cluster_size_valid((uint64_t)dd->blocksize << PF_SECTOR_SHIFT))
		return pf_why_set(why, -EINVAL,
				  "<Blocksize> %" PRIu32
				  " sectors is not a power of two between 64 KiB and 64 MiB",
				  dd->blocksize);

	n = count_children(st, "Image");
	if (n == 0)
		return pf_why_set(why, -EINVAL, "<Storage> has no <Image>");
	if (n > PF_MAX_DELTAS)
		return pf_why_set(why, -EINVAL,
				  "<Storage> has %zu images, more than the %d deltas dm-ploop can stack",
				  n, PF_MAX_DELTAS);
	dd->images = calloc(n, sizeof(*dd->images));
	if (!dd->images)
		return -ENOMEM;
	for (c = st->children; c; c = c->next) {
		if (!name_is(c, "Image"))
			continue;
		ret = parse_image(c, &dd->images[dd->n_images], why);
		if (ret)
			return ret;
		dd->n_images++;
		dd->images[dd->n_images - 1].xml_pos = (unsigned)dd->n_images;
	}
	return 0;
}

static bool is_temporary_mark(const xmlNode *n)
{
	return name_is(n, "Temporary") || name_is(n, "TemporaryZero") ||
	       name_is(n, "TemporaryZeroSwap");
}

static bool is_temporary(const xmlNode *shot)
{
	const xmlNode *c;

	for (c = shot->children; c; c = c->next)
		if (is_temporary_mark(c))
			return true;
	return false;
}

static int parse_shot(const xmlNode *e, struct pf_dd_shot *s,
		      struct pf_why *why)
{
	int ret;

	ret = child_guid(e, "GUID", s->guid, why);
	if (ret)
		return ret;
	if (!strcmp(s->guid, PF_NONE_GUID))
		return pf_why_set(why, -EINVAL,
				  "<GUID> of a shot is the null GUID");
	ret = child_guid(e, "ParentGUID", s->parent, why);
	if (ret)
		return ret;
	s->temporary = is_temporary(e);
	return 0;
}

static int parse_snapshots(const xmlNode *root, struct pf_dd *dd,
			   struct pf_why *why)
{
	const xmlNode *sn, *top, *c;
	size_t n;
	int ret;

	ret = child_opt(root, "Snapshots", &sn, why);
	if (ret)
		return ret;
	if (!sn) {
		/*
		 * Old or hand-made descriptors may omit <Snapshots>; a lone
		 * image is then the top.  Give it the shot ploop would add,
		 * so the rest of the code sees one shot per image.
		 */
		if (dd->n_images != 1)
			return pf_why_set(why, -EINVAL,
					  "no <Snapshots> and %zu images: cannot tell the top",
					  dd->n_images);
		dd->shots = calloc(1, sizeof(*dd->shots));
		if (!dd->shots)
			return -ENOMEM;
		memcpy(dd->shots[0].guid, dd->images[0].guid,
		       sizeof(dd->shots[0].guid));
		memcpy(dd->shots[0].parent, PF_NONE_GUID,
		       sizeof(dd->shots[0].parent));
		dd->n_shots = 1;
		memcpy(dd->top_guid, dd->images[0].guid, sizeof(dd->top_guid));
		return 0;
	}

	n = count_children(sn, "Shot");
	if (n == 0)
		return pf_why_set(why, -EINVAL, "<Snapshots> has no <Shot>");
	if (n > PF_MAX_DELTAS)
		return pf_why_set(why, -EINVAL,
				  "<Snapshots> has %zu shots, more than %d",
				  n, PF_MAX_DELTAS);
	dd->shots = calloc(n, sizeof(*dd->shots));
	if (!dd->shots)
		return -ENOMEM;
	for (c = sn->children; c; c = c->next) {
		if (!name_is(c, "Shot"))
			continue;
		ret = parse_shot(c, &dd->shots[dd->n_shots], why);
		if (ret)
			return ret;
		dd->n_shots++;
		dd->shots[dd->n_shots - 1].xml_pos = (unsigned)dd->n_shots;
	}

	ret = child_opt(sn, "TopGUID", &top, why);
	if (ret)
		return ret;
	if (top)
		return guid_text(top, dd->top_guid, why);
	/*
	 * The Parallels flavour may leave TopGUID out; the top is then the
	 * only shot or the one under ploop's constant top GUID.
	 */
	if (dd->n_shots == 1)
		memcpy(dd->top_guid, dd->shots[0].guid, sizeof(dd->top_guid));
	else if (dd_shot_index(dd, PF_TOP_GUID) >= 0)
		memcpy(dd->top_guid, PF_TOP_GUID, sizeof(dd->top_guid));
	else
		return pf_why_set(why, -EINVAL, "<Snapshots> has no <TopGUID>");
	return 0;
}

/* Parsing */

/* What pf_dd_parse() read: the tree pf_dd_format() edits a copy of. */
struct pf_dd_xml {
	xmlDoc *doc;
};

static pthread_once_t xml_once = PTHREAD_ONCE_INIT;

static bool blank_text(const xmlNode *n)
{
	const xmlChar *p;

	if (n->type != XML_TEXT_NODE)
		return false;
	for (p = n->content; p && *p; p++)
		if (!is_blank((char)*p))
			return false;
	return true;
}

/*
 * Drop the indentation of element @n: the whitespace-only text between
 * its children if it holds markup and no other text.
 */
static void strip_blanks(xmlNode *n)
{
	bool markup = false, text = false;
	xmlNode *c, *next;

	for (c = n->children; c; c = c->next) {
		if (c->type == XML_ELEMENT_NODE || c->type == XML_COMMENT_NODE ||
		    c->type == XML_PI_NODE)
			markup = true;
		else if ((c->type == XML_TEXT_NODE && !blank_text(c)) ||
			 c->type == XML_CDATA_SECTION_NODE ||
			 c->type == XML_ENTITY_REF_NODE)
			text = true;
	}
	if (!markup || text)
		return;
	for (c = n->children; c; c = next) {
		next = c->next;
		if (blank_text(c)) {
			xmlUnlinkNode(c);
			xmlFreeNode(c);
		}
	}
}

/*
 * Drop the indentation of every element of @doc (strip_blanks), so that
 * pf_dd_format() indents the tree, edited or not, in ploop's layout.  An
 * element with text of its own (a value, or mixed content we do not
 * model) keeps every byte of it.  Walked in document order without
 * recursion.
 */
static void strip_indent(xmlDoc *doc)
{
	xmlNode *n = doc->children;

	while (n) {
		if (n->type == XML_ELEMENT_NODE) {
			strip_blanks(n);
			if (n->children) {
				n = n->children;
				continue;
			}
		}
		/* no child to go into: the next node, or a parent's next */
		while (n && !n->next)
			n = n->parent == (xmlNode *)doc ? NULL : n->parent;
		if (n)
			n = n->next;
	}
}

/* libxml2 wants one initialisation before threads use it concurrently. */
static void xml_init(void)
{
	xmlInitParser();
}

/* libxml2's generic error handler: messages are ours to report (@why) */
static void xml_silent(void *ctx, const char *msg, ...)
{
	(void)ctx;
	(void)msg;
}

/*
 * SAX hook for "<!DOCTYPE": stop right there, before the internal subset
 * is read, so no entity is ever declared.  ploop never writes a DOCTYPE.
 */
static void refuse_doctype(void *ctx, const xmlChar *name,
			   const xmlChar *external_id, const xmlChar *system_id)
{
	xmlParserCtxtPtr ctxt = ctx;

	(void)name;
	(void)external_id;
	(void)system_id;
	*(bool *)ctxt->_private = true;
	xmlStopParser(ctxt);
}

static int parse_tree(const xmlNode *root, struct pf_dd *dd,
		      struct pf_why *why)
{
	int ret;

	if (name_is(root, ROOT_PRL))
		dd->parallels_root = true;
	else if (!name_is(root, ROOT_VZ))
		return pf_why_set(why, -EINVAL,
				  "root element <%.64s> is not <" ROOT_VZ
				  "> or <" ROOT_PRL ">",
				  (const char *)root->name);

	ret = parse_disk_params(root, dd, why);
	if (!ret)
		ret = parse_storage(root, dd, why);
	if (!ret)
		ret = dd_check_images(dd, why);
	if (!ret)
		ret = parse_snapshots(root, dd, why);
	if (!ret)
		ret = dd_check_shots(dd, why);
	return ret;
}

int pf_dd_parse(const char *buf, size_t len, struct pf_dd **out,
		struct pf_why *why)
{
	const int opts = XML_PARSE_NONET | XML_PARSE_NOERROR |
			 XML_PARSE_NOWARNING | XML_PARSE_NOCDATA;
	xmlParserCtxtPtr ctxt;
	bool doctype = false;
	struct pf_dd *dd;
	xmlDocPtr doc;
	xmlNode *root;
	int ret;

	*out = NULL;
	if (len == 0)
		return pf_why_set(why, -EINVAL, "descriptor is empty");
	if (len > PF_DD_MAX_BYTES)
		return pf_why_set(why, -EINVAL,
				  "descriptor of %zu bytes is larger than %u",
				  len, PF_DD_MAX_BYTES);

	pthread_once(&xml_once, xml_init);
	/* XML_PARSE_NOERROR does not cover encoding and I/O errors, which
	 * libxml2 raises without the context and prints to stderr (the
	 * handler is per thread, and libxml2 is used in this file only) */
	xmlSetGenericErrorFunc(NULL, xml_silent);
	ctxt = xmlNewParserCtxt();
	if (!ctxt)
		return -ENOMEM;
	ctxt->_private = &doctype;
	ctxt->sax->internalSubset = refuse_doctype;
	/* no XML_PARSE_NOENT/DTDLOAD/HUGE: entities stay unexpanded */
	doc = xmlCtxtReadMemory(ctxt, buf, (int)len, NULL, NULL, opts);
	if (doctype) {
		ret = pf_why_set(why, -EINVAL,
				 "<!DOCTYPE> is not allowed in a descriptor");
		goto out_doc;
	}
	if (!doc || !ctxt->wellFormed) {
		ret = xml_error(why, ctxt);
		goto out_doc;
	}
	root = xmlDocGetRootElement(doc);
	if (!root) {
		ret = pf_why_set(why, -EINVAL,
				 "descriptor has no root element");
		goto out_doc;
	}

	dd = calloc(1, sizeof(*dd));
	if (!dd) {
		ret = -ENOMEM;
		goto out_doc;
	}
	ret = parse_tree(root, dd, why);
	if (!ret) {
		dd->xml = malloc(sizeof(*dd->xml));
		if (!dd->xml)
			ret = -ENOMEM;
	}
	if (ret) {
		pf_dd_free(dd);
		goto out_doc;
	}
	/* kept for pf_dd_format(), which writes back what we do not model */
	strip_indent(doc);
	dd->xml->doc = doc;
	doc = NULL;
	*out = dd;

out_doc:
	xmlFreeDoc(doc);
	xmlFreeParserCtxt(ctxt);
	return ret;
}

int pf_dd_load(int dirfd, struct pf_dd **out, struct pf_why *why)
{
	struct stat st;
	char *buf;
	int fd, ret;

	*out = NULL;
	/*
	 * O_NOFOLLOW: a symlink planted in the directory is not followed;
	 * O_NONBLOCK: a FIFO in its place cannot hang us in open() (it has
	 * no effect on a regular file, and anything else is refused below).
	 */
	fd = openat(dirfd, PF_DD_NAME,
		    O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0) {
		ret = -errno;
		/* a socket (ENXIO) or a device cannot be opened: say what
		 * it is rather than the errno's words */
		if (!fstatat(dirfd, PF_DD_NAME, &st, AT_SYMLINK_NOFOLLOW) &&
		    !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode))
			return pf_why_set(why, -EINVAL,
					  PF_DD_NAME " is not a regular file");
		return pf_why_set(why, ret, "cannot open " PF_DD_NAME ": %s",
				  strerror(-ret));
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		pf_why_fmt(why, "cannot stat " PF_DD_NAME ": %s",
			   strerror(-ret));
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = pf_why_set(why, -EINVAL,
				 PF_DD_NAME " is not a regular file");
		goto out_close;
	}
	if (st.st_size > (off_t)PF_DD_MAX_BYTES) {
		ret = pf_why_set(why, -EFBIG,
				 PF_DD_NAME " is %jd bytes, more than the limit of %u",
				 (intmax_t)st.st_size, PF_DD_MAX_BYTES);
		goto out_close;
	}

	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		ret = -ENOMEM;
		goto out_close;
	}
	ret = pf_pread_full(fd, buf, (size_t)st.st_size, 0);
	if (ret) {
		pf_why_fmt(why, "cannot read " PF_DD_NAME ": %s",
			   strerror(-ret));
		goto out_free;
	}
	ret = pf_dd_parse(buf, (size_t)st.st_size, out, why);

out_free:
	free(buf);
out_close:
	close(fd);
	return ret;
}

/* Writing */

static xmlNode *add_text(xmlNode *parent, const char *name, const char *text)
{
	/* xmlNewTextChild escapes @text, unlike xmlNewChild */
	return xmlNewTextChild(parent, NULL, (const xmlChar *)name,
			       (const xmlChar *)text);
}

static xmlNode *add_u64(xmlNode *parent, const char *name, uint64_t v)
{
	char num[24];

	snprintf(num, sizeof(num), "%" PRIu64, v);
	return add_text(parent, name, num);
}

static int build_tree(const struct pf_dd *dd, xmlNode *root)
{
	xmlNode *dp, *sd, *st, *img, *sn, *shot;
	size_t i;

	dp = xmlNewChild(root, NULL, BAD_CAST "Disk_Parameters", NULL);
	if (!dp || !add_u64(dp, "Disk_size", dd->disk_size_sectors) ||
	    !add_u64(dp, "Cylinders", dd->cylinders) ||
	    !add_u64(dp, "Heads", dd->heads) ||
	    !add_u64(dp, "Sectors", dd->sectors) ||
	    !add_u64(dp, "Padding", 0))
		return -ENOMEM;

	sd = xmlNewChild(root, NULL, BAD_CAST "StorageData", NULL);
	st = sd ? xmlNewChild(sd, NULL, BAD_CAST "Storage", NULL) : NULL;
	if (!st || !add_u64(st, "Start", 0) ||
	    !add_u64(st, "End", dd->disk_size_sectors) ||
	    !add_u64(st, "Blocksize", dd->blocksize))
		return -ENOMEM;
	for (i = 0; i < dd->n_images; i++) {
		img = xmlNewChild(st, NULL, BAD_CAST "Image", NULL);
		if (!img || !add_text(img, "GUID", dd->images[i].guid) ||
		    !add_text(img, "Type", "Compressed") ||
		    !add_text(img, "File", dd->images[i].file))
			return -ENOMEM;
	}

	if (dd->n_shots == 0)
		return 0;
	sn = xmlNewChild(root, NULL, BAD_CAST "Snapshots", NULL);
	if (!sn || !add_text(sn, "TopGUID", dd->top_guid))
		return -ENOMEM;
	for (i = 0; i < dd->n_shots; i++) {
		shot = xmlNewChild(sn, NULL, BAD_CAST "Shot", NULL);
		if (!shot || !add_text(shot, "GUID", dd->shots[i].guid) ||
		    !add_text(shot, "ParentGUID", dd->shots[i].parent))
			return -ENOMEM;
		if (dd->shots[i].temporary &&
		    !xmlNewChild(shot, NULL, BAD_CAST "Temporary", NULL))
			return -ENOMEM;
	}
	return 0;
}

/* Editing a parsed document */

/* The first child element <@name> of @parent, or NULL. */
static xmlNode *first_child(xmlNode *parent, const char *name)
{
	xmlNode *c;

	for (c = parent->children; c; c = c->next)
		if (name_is(c, name))
			return c;
	return NULL;
}

/* Make @text (escaped on output) the only content of element @e. */
static int set_text(xmlNode *e, const char *text)
{
	xmlNode *t = xmlNewDocText(e->doc, (const xmlChar *)text);

	if (!t)
		return -ENOMEM;
	xmlFreeNodeList(e->children);
	e->children = e->last = NULL;
	if (!xmlAddChild(e, t)) {
		xmlFreeNode(t);
		return -ENOMEM;
	}
	return 0;
}

/* Set the text of child <@name> of @parent, added last if missing. */
static int set_child(xmlNode *parent, const char *name, const char *text)
{
	xmlNode *e = first_child(parent, name);

	if (!e)
		return add_text(parent, name, text) ? 0 : -ENOMEM;
	return set_text(e, text);
}

static int set_child_u64(xmlNode *parent, const char *name, uint64_t v)
{
	char num[24];

	snprintf(num, sizeof(num), "%" PRIu64, v);
	return set_child(parent, name, num);
}

static void free_node(xmlNode *n)
{
	xmlUnlinkNode(n);
	xmlFreeNode(n);
}

/*
 * The children <@name> of @parent in document order (*n of them, *nodes
 * malloc'ed, NULL when there are none), and a mark per node, all false.
 */
static int collect(xmlNode *parent, const char *name, xmlNode ***nodes,
		   bool **kept, size_t *n)
{
	size_t count = count_children(parent, name), i = 0;
	xmlNode *c;

	*nodes = NULL;
	*kept = NULL;
	*n = 0;
	if (!count)
		return 0;
	*nodes = calloc(count, sizeof(**nodes));
	*kept = calloc(count, sizeof(**kept));
	if (!*nodes || !*kept) {
		free(*nodes);
		free(*kept);
		*nodes = NULL;
		*kept = NULL;
		return -ENOMEM;
	}
	for (c = parent->children; c && i < count; c = c->next)
		if (name_is(c, name))
			(*nodes)[i++] = c;
	*n = i;
	return 0;
}

/* The element of the parsed document at @xml_pos (see struct
 * pf_dd_image), marked kept; NULL for an entry added since. */
static xmlNode *kept_node(unsigned xml_pos, xmlNode **nodes, bool *kept,
			  size_t n)
{
	if (!xml_pos || xml_pos > n || kept[xml_pos - 1])
		return NULL;
	kept[xml_pos - 1] = true;
	return nodes[xml_pos - 1];
}

/*
 * Put the new element @e under @parent: after @prev, the element of the
 * entry before it, or else before the first of the old elements of its
 * kind, or else last.  New images and shots so land beside their
 * siblings, in the order of the arrays, as ploop lays them out.
 */
static int place(xmlNode *parent, xmlNode *e, xmlNode *prev, xmlNode **old,
		 size_t n_old)
{
	xmlNode *r;

	if (prev)
		r = xmlAddNextSibling(prev, e);
	else if (n_old)
		r = xmlAddPrevSibling(old[0], e);
	else
		r = xmlAddChild(parent, e);
	return r ? 0 : -ENOMEM;
}

/*
 * The elements @tag under @parent become the model's @n entries, in
 * order: entry i edits the element it was parsed from (@pos(i), see
 * kept_node()) in place, whatever else it holds staying, or a new
 * element after its predecessor; @fill sets the modelled children
 * (@fresh: of a new element, not in the tree yet).  An element whose
 * entry is gone goes with everything inside it.
 */
struct list_kind {
	const char *tag;
	size_t (*count)(const struct pf_dd *dd);
	unsigned (*pos)(const struct pf_dd *dd, size_t i);
	int (*fill)(const struct pf_dd *dd, size_t i, xmlNode *e, bool fresh);
	/* after the element is in place; NULL: nothing */
	int (*placed)(const struct pf_dd *dd, size_t i, xmlNode *e);
};

static int edit_list(const struct pf_dd *dd, xmlNode *parent,
		     const struct list_kind *k)
{
	xmlNode **old, *e, *prev = NULL;
	size_t n_old, i, n = k->count(dd);
	bool *kept;
	int ret;

	ret = collect(parent, k->tag, &old, &kept, &n_old);
	if (ret)
		return ret;
	for (i = 0; i < n && !ret; i++) {
		e = kept_node(k->pos(dd, i), old, kept, n_old);
		if (e) {
			ret = k->fill(dd, i, e, false);
		} else {
			e = xmlNewDocNode(parent->doc, NULL, BAD_CAST k->tag,
					  NULL);
			ret = e ? k->fill(dd, i, e, true) : -ENOMEM;
			if (!ret)
				ret = place(parent, e, prev, old, n_old);
			if (ret) {
				xmlFreeNode(e);
				break;
			}
		}
		if (!ret && k->placed)
			ret = k->placed(dd, i, e);
		prev = e;
	}
	for (i = 0; i < n_old && !ret; i++)
		if (!kept[i])
			free_node(old[i]);
	free(old);
	free(kept);
	return ret;
}

static size_t image_count(const struct pf_dd *dd)
{
	return dd->n_images;
}

static unsigned image_pos(const struct pf_dd *dd, size_t i)
{
	return dd->images[i].xml_pos;
}

static int image_fill(const struct pf_dd *dd, size_t i, xmlNode *e,
		      bool fresh)
{
	const struct pf_dd_image *im = &dd->images[i];
	int ret;

	if (fresh)
		return add_text(e, "GUID", im->guid) &&
				       add_text(e, "Type", "Compressed") &&
				       add_text(e, "File", im->file) ?
			       0 :
			       -ENOMEM;
	ret = set_child(e, "GUID", im->guid);
	return ret ? ret : set_child(e, "File", im->file);
}

static const struct list_kind image_list = {
	"Image", image_count, image_pos, image_fill, NULL,
};

static int edit_images(const struct pf_dd *dd, xmlNode *st)
{
	return edit_list(dd, st, &image_list);
}

/* Add or remove the temporary mark of element <Shot> @e. */
static int edit_temporary(xmlNode *e, bool on)
{
	xmlNode *c, *next, *pg, *t;

	if (on) {
		if (is_temporary(e))
			return 0;
		/* where ploop writes it: after <ParentGUID> */
		t = xmlNewDocNode(e->doc, NULL, BAD_CAST "Temporary", NULL);
		pg = first_child(e, "ParentGUID");
		if (!t || !(pg ? xmlAddNextSibling(pg, t) : xmlAddChild(e, t))) {
			xmlFreeNode(t);
			return -ENOMEM;
		}
		return 0;
	}
	for (c = e->children; c; c = next) {
		next = c->next;
		if (is_temporary_mark(c))
			free_node(c);
	}
	return 0;
}

static size_t shot_count(const struct pf_dd *dd)
{
	return dd->n_shots;
}

static unsigned shot_pos(const struct pf_dd *dd, size_t i)
{
	return dd->shots[i].xml_pos;
}

static int shot_fill(const struct pf_dd *dd, size_t i, xmlNode *e,
		     bool fresh)
{
	const struct pf_dd_shot *sh = &dd->shots[i];
	int ret;

	if (fresh)
		return add_text(e, "GUID", sh->guid) &&
				       add_text(e, "ParentGUID", sh->parent) ?
			       0 :
			       -ENOMEM;
	ret = set_child(e, "GUID", sh->guid);
	return ret ? ret : set_child(e, "ParentGUID", sh->parent);
}

static int shot_placed(const struct pf_dd *dd, size_t i, xmlNode *e)
{
	return edit_temporary(e, dd->shots[i].temporary);
}

static const struct list_kind shot_list = {
	"Shot", shot_count, shot_pos, shot_fill, shot_placed,
};

static int edit_shots(const struct pf_dd *dd, xmlNode *sn)
{
	return edit_list(dd, sn, &shot_list);
}

static int edit_snapshots(const struct pf_dd *dd, xmlNode *root,
			  xmlNode *sd)
{
	xmlNode *sn = first_child(root, "Snapshots"), *top;

	if (!sn) {
		if (!dd->n_shots)
			return 0;
		/* parsed without one: ploop's place, after <StorageData> */
		sn = xmlNewDocNode(root->doc, NULL, BAD_CAST "Snapshots",
				   NULL);
		if (!sn || !xmlAddNextSibling(sd, sn)) {
			xmlFreeNode(sn);
			return -ENOMEM;
		}
	}
	top = first_child(sn, "TopGUID");
	if (top) {
		if (set_text(top, dd->top_guid))
			return -ENOMEM;
	} else {
		/* the Parallels flavour may leave it out; ploop writes it */
		top = xmlNewDocNode(root->doc, NULL, BAD_CAST "TopGUID", NULL);
		if (!top || set_text(top, dd->top_guid) ||
		    !(sn->children ? xmlAddPrevSibling(sn->children, top) :
				     xmlAddChild(sn, top))) {
			xmlFreeNode(top);
			return -ENOMEM;
		}
	}
	return edit_shots(dd, sn);
}

/*
 * Bring a copy of the parsed document up to date with @dd: the modelled
 * values are set in their elements, images and shots added, removed or
 * changed in place; every other element, attribute, comment and text
 * stays where it was.  pf_dd_parse() validated the document, so the
 * required elements are there; one that is not is added.
 */
static int edit_tree(const struct pf_dd *dd, xmlDoc *doc)
{
	xmlNode *root = xmlDocGetRootElement(doc), *dp, *sd, *st;
	const char *want = dd->parallels_root ? ROOT_PRL : ROOT_VZ;
	int ret;

	if (!root)
		return -EINVAL;
	if (!name_is(root, want))
		xmlNodeSetName(root, BAD_CAST want);
	dp = first_child(root, "Disk_Parameters");
	sd = first_child(root, "StorageData");
	st = sd ? first_child(sd, "Storage") : NULL;
	if (!dp || !st)
		return -EINVAL;
	ret = set_child_u64(dp, "Disk_size", dd->disk_size_sectors);
	if (!ret)
		ret = set_child_u64(dp, "Cylinders", dd->cylinders);
	if (!ret)
		ret = set_child_u64(dp, "Heads", dd->heads);
	if (!ret)
		ret = set_child_u64(dp, "Sectors", dd->sectors);
	if (!ret)
		ret = set_child_u64(st, "End", dd->disk_size_sectors);
	if (!ret)
		ret = set_child_u64(st, "Blocksize", dd->blocksize);
	if (!ret)
		ret = edit_images(dd, st);
	if (!ret)
		ret = edit_snapshots(dd, root, sd);
	return ret;
}

/* The document to write for @dd: built afresh, or the parsed one edited. */
static int doc_of(const struct pf_dd *dd, xmlDoc **out)
{
	xmlNode *root;
	xmlDoc *doc;
	int ret;

	*out = NULL;
	if (dd->xml) {
		doc = xmlCopyDoc(dd->xml->doc, 1);
		if (!doc)
			return -ENOMEM;
		ret = edit_tree(dd, doc);
	} else {
		doc = xmlNewDoc(BAD_CAST "1.0");
		if (!doc)
			return -ENOMEM;
		root = xmlNewNode(NULL, (const xmlChar *)(dd->parallels_root ?
								  ROOT_PRL :
								  ROOT_VZ));
		if (!root) {
			xmlFreeDoc(doc);
			return -ENOMEM;
		}
		xmlDocSetRootElement(doc, root);
		ret = build_tree(dd, root);
	}
	if (ret) {
		xmlFreeDoc(doc);
		return ret;
	}
	*out = doc;
	return 0;
}

int pf_dd_format(const struct pf_dd *dd, char **buf, size_t *len)
{
	xmlChar *mem = NULL;
	xmlDocPtr doc;
	int size = 0, ret;
	char *copy;

	*buf = NULL;
	*len = 0;
	pthread_once(&xml_once, xml_init);
	ret = doc_of(dd, &doc);
	if (ret)
		return ret;

	/* format=1 gives ploop's layout: one element a line, 2-space indent */
	xmlDocDumpFormatMemory(doc, &mem, &size, 1);
	if (!mem || size <= 0) {
		ret = -ENOMEM;
		goto out_mem;
	}
	/* never write what pf_dd_load() would refuse to read back */
	if ((size_t)size > PF_DD_MAX_BYTES) {
		ret = -EFBIG;
		goto out_mem;
	}
	/* hand out plain malloc memory: callers free() it */
	copy = malloc((size_t)size + 1);
	if (!copy) {
		ret = -ENOMEM;
		goto out_mem;
	}
	memcpy(copy, mem, (size_t)size);
	copy[size] = '\0';
	*buf = copy;
	*len = (size_t)size;

out_mem:
	xmlFree(mem);
	xmlFreeDoc(doc);
	return ret;
}

int pf_dd_store_tmp(int dirfd, const struct pf_dd *dd)
{
	bool keep_mode = false;
	mode_t mode = PF_DD_MODE;
	struct stat st;
	size_t len;
	char *buf;
	int fd, ret;

	ret = pf_dd_format(dd, &buf, &len);
	if (ret)
		return ret;

	/* the replaced descriptor's permissions, whoever set them */
	if (fstatat(dirfd, PF_DD_NAME, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    S_ISREG(st.st_mode)) {
		mode = st.st_mode & 0777;
		keep_mode = true;
	}
	/*
	 * Rule W6: a new top delta is fully written and synced before
	 * DiskDescriptor.xml names it, and the descriptor is replaced
	 * atomically.  The new text goes to a tmp file that is synced
	 * before the rename (pf_dd_commit_tmp), so a crash leaves either
	 * the old or the new descriptor, never a torn one.
	 */
	fd = openat(dirfd, PF_DD_TMP_NAME, O_CREAT | O_EXCL | O_WRONLY |
		    O_CLOEXEC | O_NOFOLLOW, mode);
	/*
	 * A regular file in the way is a tmp left by a crash (ours or
	 * ploop's): nothing reads it.  It is replaced, not truncated, so
	 * that it can neither keep its own mode nor, as a hard link, make
	 * us write into another file.  Anything else is not ours.
	 */
	if (fd < 0 && errno == EEXIST &&
	    fstatat(dirfd, PF_DD_TMP_NAME, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    S_ISREG(st.st_mode) && unlinkat(dirfd, PF_DD_TMP_NAME, 0) == 0)
		fd = openat(dirfd, PF_DD_TMP_NAME, O_CREAT | O_EXCL | O_WRONLY |
			    O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0) {
		/* not ours to remove: we did not create it */
		ret = -errno;
		goto out_free;
	}
	/* a new one is 0644 less the umask, as ploop's; a kept mode is
	 * kept whole */
	if (keep_mode && fchmod(fd, mode) < 0)
		ret = -errno;
	if (!ret)
		ret = pf_pwrite_full(fd, buf, len, 0);
	if (!ret && fsync(fd) < 0)
		ret = -errno;
	/* close() can report a deferred write error (NFS): do not ignore */
	if (close(fd) < 0 && !ret)
		ret = -errno;
	if (ret)
		goto out_unlink;
	goto out_free;

out_unlink:
	pf_dd_drop_tmp(dirfd);
out_free:
	free(buf);
	return ret;
}

int pf_dd_commit_tmp(int dirfd, bool *committed)
{
	*committed = false;
	/* W6: the rename is the commit point ... */
	if (renameat(dirfd, PF_DD_TMP_NAME, dirfd, PF_DD_NAME) < 0) {
		int ret = -errno;

		pf_dd_drop_tmp(dirfd);
		return ret;
	}
	*committed = true;
	/* ... and the directory sync makes it durable.  If that fails the
	 * new descriptor is what every reader sees, but a power cut may
	 * bring back the old one: the caller's policy (descriptor.h). */
	return pf_fsync_dir(dirfd);
}

void pf_dd_drop_tmp(int dirfd)
{
	/* nothing reads a tmp file: one that stays is only clutter */
	(void)unlinkat(dirfd, PF_DD_TMP_NAME, 0);
}

int pf_dd_replace(int dirfd, const struct pf_dd *dd, bool *committed)
{
	int ret;

	*committed = false;
	ret = pf_dd_store_tmp(dirfd, dd);
	if (ret)
		return ret;
	return pf_dd_commit_tmp(dirfd, committed);
}

void pf_dd_free(struct pf_dd *dd)
{
	size_t i;

	if (!dd)
		return;
	if (dd->xml) {
		xmlFreeDoc(dd->xml->doc);
		free(dd->xml);
	}
	for (i = 0; i < dd->n_images; i++)
		free(dd->images[i].file);
	free(dd->images);
	free(dd->shots);
	free(dd);
}
