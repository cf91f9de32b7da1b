// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Unit tests of descriptor.c: the ploop-format.md examples, round trips,
 * snapshots, atomic store/load (whole and split in tmp + commit), the
 * snapshot edits (temporary mark, delete/merge, switch) and the branches
 * they leave, hostile documents (inline and the corpus in $PF_CORPUS_DIR,
 * default tests/corpus/dd); and the image operations of image.c on real
 * files: switch, snapshot preparation (GUID rules, naming), chain open.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "delta.h"
#include "descriptor.h"
#include "image.h"
#include "tap.h"
#include "testutil.h"
#include "wrap_fsync.h"

#define GA	"{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}"
#define GB	"{1b2c3d4e-5f60-4172-8394-a5b6c7d8e9f0}"
#define GC	"{2c3d4e5f-6071-4283-94a5-b6c7d8e9f0a1}"
#define GT	PF_TOP_GUID
#define GN	PF_NONE_GUID

/* The example of ploop-format.md 2.2, byte for byte. */
static const char ex_2_2[] =
	"<?xml version=\"1.0\"?>\n"
	"<Virtuozzo_disk_image>\n"
	"  <Disk_Parameters>\n"
	"    <Disk_size>20971520</Disk_size>\n"
	"    <Cylinders>40960</Cylinders>\n"
	"    <Heads>16</Heads>\n"
	"    <Sectors>32</Sectors>\n"
	"    <Padding>0</Padding>\n"
	"  </Disk_Parameters>\n"
	"  <StorageData>\n"
	"    <Storage>\n"
	"      <Start>0</Start>\n"
	"      <End>20971520</End>\n"
	"      <Blocksize>2048</Blocksize>\n"
	"      <Image>\n"
	"        <GUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</GUID>\n"
	"        <Type>Compressed</Type>\n"
	"        <File>root.hds</File>\n"
	"      </Image>\n"
	"    </Storage>\n"
	"  </StorageData>\n"
	"  <Snapshots>\n"
	"    <TopGUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</TopGUID>\n"
	"    <Shot>\n"
	"      <GUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</GUID>\n"
	"      <ParentGUID>{00000000-0000-0000-0000-000000000000}</ParentGUID>\n"
	"    </Shot>\n"
	"  </Snapshots>\n"
	"</Virtuozzo_disk_image>\n";

/* The example of 2.3 completed with 2.2's header, under the old root. */
static const char ex_2_3[] =
	"<?xml version=\"1.0\"?>\n"
	"<Parallels_disk_image>\n"
	"  <Disk_Parameters>\n"
	"    <Disk_size>20971520</Disk_size>\n"
	"    <Cylinders>40960</Cylinders>\n"
	"    <Heads>16</Heads>\n"
	"    <Sectors>32</Sectors>\n"
	"    <Padding>0</Padding>\n"
	"  </Disk_Parameters>\n"
	"  <StorageData>\n"
	"    <Storage>\n"
	"      <Start>0</Start>\n"
	"      <End>20971520</End>\n"
	"      <Blocksize>2048</Blocksize>\n"
	"      <Image>\n"
	"        <GUID>{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}</GUID>\n"
	"        <Type>Compressed</Type>\n"
	"        <File>root.hds</File>\n"
	"      </Image>\n"
	"      <Image>\n"
	"        <GUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</GUID>\n"
	"        <Type>Compressed</Type>\n"
	"        <File>root.hds.{7d5f7c2e-3b1a-4f0e-9e44-1c2d3e4f5a6b}</File>\n"
	"      </Image>\n"
	"    </Storage>\n"
	"  </StorageData>\n"
	"  <Snapshots>\n"
	"    <TopGUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</TopGUID>\n"
	"    <Shot>\n"
	"      <GUID>{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}</GUID>\n"
	"      <ParentGUID>{00000000-0000-0000-0000-000000000000}</ParentGUID>\n"
	"    </Shot>\n"
	"    <Shot>\n"
	"      <GUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</GUID>\n"
	"      <ParentGUID>{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}</ParentGUID>\n"
	"    </Shot>\n"
	"  </Snapshots>\n"
	"</Parallels_disk_image>\n";

/* Building blocks for the inline hostile documents. */
#define DOC(body) \
	"<?xml version=\"1.0\"?>\n<Virtuozzo_disk_image>" body \
	"</Virtuozzo_disk_image>\n"
#define DP_SIZE(size) \
	"<Disk_Parameters><Disk_size>" size "</Disk_size>" \
	"<Cylinders>40960</Cylinders><Heads>16</Heads><Sectors>32</Sectors>" \
	"<Padding>0</Padding></Disk_Parameters>"
#define DP DP_SIZE("20971520")
#define STG(start, end, bs, images) \
	"<StorageData><Storage><Start>" start "</Start><End>" end "</End>" \
	"<Blocksize>" bs "</Blocksize>" images "</Storage></StorageData>"
#define ST(images) STG("0", "20971520", "2048", images)
#define IMGT(g, type, f) \
	"<Image><GUID>" g "</GUID><Type>" type "</Type><File>" f \
	"</File></Image>"
#define IMG(g, f) IMGT(g, "Compressed", f)
#define SHOT(g, p) "<Shot><GUID>" g "</GUID><ParentGUID>" p \
	"</ParentGUID></Shot>"
#define TSHOT(g, p) "<Shot><GUID>" g "</GUID><ParentGUID>" p \
	"</ParentGUID><Temporary/></Shot>"
#define SN(top, shots) "<Snapshots><TopGUID>" top "</TopGUID>" shots \
	"</Snapshots>"
#define ONE DP ST(IMG(GT, "root.hds")) SN(GT, SHOT(GT, GN))

struct hostile {
	const char *name;
	const char *doc;
	const char *want;	/* substring of why->msg */
};

#define NUL_DOC "<?xml version=\"1.0\"?>\n<Virtuozzo_disk_image>\0" \
	"</Virtuozzo_disk_image>"

static const struct hostile hostile[] = {
	{ "malformed", DOC(DP "<StorageData>"), "not well-formed" },
	{ "truncated", "<?xml version=\"1.0\"?>\n<Virtuozzo_disk_image><Disk_",
	  "not well-formed" },
	{ "wrong root", "<?xml version=\"1.0\"?><Disk_image>" ONE
	  "</Disk_image>", "root element <Disk_image>" },
	{ "no Disk_Parameters", DOC(ST(IMG(GT, "root.hds"))),
	  "has no <Disk_Parameters>" },
	{ "no Disk_size",
	  DOC("<Disk_Parameters><Cylinders>1</Cylinders><Heads>1</Heads>"
	      "<Sectors>1</Sectors></Disk_Parameters>" ST(IMG(GT, "root.hds"))),
	  "has no <Disk_size>" },
	{ "no Heads",
	  DOC("<Disk_Parameters><Disk_size>20971520</Disk_size>"
	      "<Cylinders>1</Cylinders><Sectors>1</Sectors></Disk_Parameters>"
	      ST(IMG(GT, "root.hds"))),
	  "has no <Heads>" },
	{ "size abc", DOC(DP_SIZE("abc") ST(IMG(GT, "root.hds"))),
	  "<Disk_size> \"abc\" is not a number" },
	{ "size negative", DOC(DP_SIZE("-1") ST(IMG(GT, "root.hds"))),
	  "<Disk_size> \"-1\" is not a number" },
	{ "size plus", DOC(DP_SIZE("+1") ST(IMG(GT, "root.hds"))),
	  "is not a number" },
	{ "size hex", DOC(DP_SIZE("0x10") ST(IMG(GT, "root.hds"))),
	  "is not a number" },
	{ "size inner space", DOC(DP_SIZE("1 0") ST(IMG(GT, "root.hds"))),
	  "is not a number" },
	{ "size empty", DOC(DP_SIZE("") ST(IMG(GT, "root.hds"))),
	  "<Disk_size> is empty" },
	{ "size 0", DOC(DP_SIZE("0") ST(IMG(GT, "root.hds"))),
	  "<Disk_size> is 0" },
	{ "size x512 overflows",
	  DOC(DP_SIZE("36028797018963968") ST(IMG(GT, "root.hds"))),
	  "out of range" },
	{ "size u64 overflows",
	  DOC(DP_SIZE("18446744073709551616") ST(IMG(GT, "root.hds"))),
	  "out of range" },
	{ "heads over u32",
	  DOC("<Disk_Parameters><Disk_size>20971520</Disk_size>"
	      "<Cylinders>1</Cylinders><Heads>4294967296</Heads>"
	      "<Sectors>1</Sectors></Disk_Parameters>" ST(IMG(GT, "root.hds"))),
	  "<Heads> \"4294967296\" is out of range" },
	{ "two Disk_size",
	  DOC("<Disk_Parameters><Disk_size>8</Disk_size>"
	      "<Disk_size>8</Disk_size></Disk_Parameters>"),
	  "<Disk_size> appears more than once" },
	{ "Start 1", DOC(DP STG("1", "20971520", "2048", IMG(GT, "r"))),
	  "<Start> 1 is not 0" },
	{ "End differs", DOC(DP STG("0", "20971519", "2048", IMG(GT, "r"))),
	  "<End> 20971519 differs" },
	{ "Blocksize 7", DOC(DP STG("0", "20971520", "7", IMG(GT, "r"))),
	  "<Blocksize> 7 sectors" },
	{ "Blocksize 0", DOC(DP STG("0", "20971520", "0", IMG(GT, "r"))),
	  "<Blocksize> 0 sectors" },
	{ "Blocksize 64", DOC(DP STG("0", "20971520", "64", IMG(GT, "r"))),
	  "<Blocksize> 64 sectors" },
	{ "Blocksize 262144",
	  DOC(DP STG("0", "20971520", "262144", IMG(GT, "r"))),
	  "<Blocksize> 262144 sectors" },
	{ "two Storage",
	  DOC(DP "<StorageData><Storage><Start>0</Start><End>20971520</End>"
	      "<Blocksize>2048</Blocksize>" IMG(GT, "a") "</Storage>"
	      "<Storage><Start>0</Start><End>20971520</End>"
	      "<Blocksize>2048</Blocksize>" IMG(GA, "b") "</Storage>"
	      "</StorageData>"),
	  "has 2 <Storage> elements" },
	{ "no Storage", DOC(DP "<StorageData></StorageData>"),
	  "has 0 <Storage>" },
	{ "no Image", DOC(DP ST("")), "<Storage> has no <Image>" },
	{ "Image without File",
	  DOC(DP ST("<Image><GUID>" GT "</GUID><Type>Compressed</Type>"
		    "</Image>")),
	  "has no <File>" },
	{ "Image without GUID",
	  DOC(DP ST("<Image><Type>Compressed</Type><File>r</File></Image>")),
	  "<Image> has no <GUID>" },
	{ "Image without Type",
	  DOC(DP ST("<Image><GUID>" GT "</GUID><File>r</File></Image>")),
	  "has no <Type>" },
	{ "absolute File", DOC(DP ST(IMG(GT, "/etc/passwd"))),
	  "is an absolute path" },
	{ "dotdot File", DOC(DP ST(IMG(GT, "../x"))),
	  "<File> \"../x\" of image " GT " escapes the image directory" },
	{ "inner dotdot File", DOC(DP ST(IMG(GT, "a/../../x"))),
	  "escapes the image directory" },
	{ "File ..", DOC(DP ST(IMG(GT, ".."))), "is not a file name" },
	{ "File .", DOC(DP ST(IMG(GT, "."))), "is not a file name" },
	{ "File with slash", DOC(DP ST(IMG(GT, "sub/root.hds"))),
	  "contains '/'" },
	{ "empty File", DOC(DP ST(IMG(GT, ""))), "is empty" },
	{ "blank File", DOC(DP ST(IMG(GT, "  \n "))), "is empty" },
	{ "File control char", DOC(DP ST(IMG(GT, "a&#9;b"))),
	  "control character" },
	{ "File entity", DOC(DP ST(IMG(GT, "a&#x2F;b"))), "contains '/'" },
	{ "File markup", DOC(DP ST(IMG(GT, "a<b/>c"))), "markup" },
	{ "Type Plain", DOC(DP ST(IMGT(GT, "Plain", "root.hds"))),
	  "raw base images are not supported" },
	{ "Type other", DOC(DP ST(IMGT(GT, "Qcow2", "root.hds"))),
	  "<Type> \"Qcow2\" of image " GT " is not Compressed" },
	{ "GUID short", DOC(DP ST(IMG("{5fbaabe3-6958-40ff-92a7-860e329aab4}",
				      "r"))),
	  "is not a GUID" },
	{ "GUID no braces",
	  DOC(DP ST(IMG("5fbaabe3-6958-40ff-92a7-860e329aab41", "r"))),
	  "is not a GUID" },
	{ "GUID non-hex",
	  DOC(DP ST(IMG("{5fbaabe3-6958-40ff-92a7-860e329aab4g}", "r"))),
	  "is not a GUID" },
	{ "GUID dash moved",
	  DOC(DP ST(IMG("{5fbaabe36-958-40ff-92a7-860e329aab41}", "r"))),
	  "is not a GUID" },
	{ "GUID null", DOC(DP ST(IMG(GN, "r"))), "is the null GUID" },
	{ "duplicate image GUID",
	  DOC(DP ST(IMG(GA, "a") IMG(GA, "b")) SN(GA, SHOT(GA, GN))),
	  "<GUID> " GA " is used by two images" },
	{ "duplicate image GUID case",
	  DOC(DP ST(IMG(GA, "a")
		    IMG("{0E24C2B0-9A0B-4C5E-8D2F-6F1F3E2A9B11}", "b"))),
	  "is used by two images" },
	{ "duplicate File",
	  DOC(DP ST(IMG(GA, "a") IMG(GT, "a"))
	      SN(GT, SHOT(GA, GN) SHOT(GT, GA))),
	  "<File> \"a\" is used by two images" },
	{ "two images no Snapshots", DOC(DP ST(IMG(GA, "a") IMG(GT, "b"))),
	  "cannot tell the top" },
	{ "TopGUID names nothing",
	  DOC(DP ST(IMG(GT, "r")) SN(GA, SHOT(GT, GN))),
	  "<TopGUID> " GA " names no shot" },
	{ "TopGUID malformed",
	  DOC(DP ST(IMG(GT, "r")) SN("{nope}", SHOT(GT, GN))),
	  "<TopGUID> \"{nope}\" is not a GUID" },
	{ "TopGUID temporary",
	  DOC(DP ST(IMG(GA, "a") IMG(GT, "b"))
	      SN(GT, SHOT(GA, GN) TSHOT(GT, GA))),
	  "names a temporary shot" },
	{ "no TopGUID, two shots, no top GUID",
	  DOC(DP ST(IMG(GA, "a") IMG(GB, "b"))
	      "<Snapshots>" SHOT(GA, GN) SHOT(GB, GA) "</Snapshots>"),
	  "<Snapshots> has no <TopGUID>" },
	{ "cycle of two",
	  DOC(DP ST(IMG(GA, "a") IMG(GT, "b"))
	      SN(GT, SHOT(GA, GT) SHOT(GT, GA))),
	  "has a cycle at" },
	{ "cycle off the chain",
	  DOC(DP ST(IMG(GT, "t") IMG(GA, "a") IMG(GB, "b"))
	      SN(GT, SHOT(GT, GN) SHOT(GA, GB) SHOT(GB, GA))),
	  "snapshot chain from shot " GA " has a cycle" },
	{ "self parent",
	  DOC(DP ST(IMG(GT, "r")) SN(GT, SHOT(GT, GT))),
	  "is the shot itself" },
	{ "unknown parent",
	  DOC(DP ST(IMG(GT, "r")) SN(GT, SHOT(GT, GA))),
	  "<ParentGUID> " GA " of shot " GT " names no shot" },
	{ "ParentGUID missing",
	  DOC(DP ST(IMG(GT, "r"))
	      SN(GT, "<Shot><GUID>" GT "</GUID></Shot>")),
	  "<Shot> has no <ParentGUID>" },
	{ "shot without image",
	  DOC(DP ST(IMG(GT, "r")) SN(GT, SHOT(GA, GN) SHOT(GT, GA))),
	  "<Shot> " GA " has no <Image>" },
	{ "image without shot",
	  DOC(DP ST(IMG(GA, "a") IMG(GT, "b")) SN(GT, SHOT(GT, GN))),
	  "<Image> " GA " has no <Shot>" },
	{ "duplicate shot GUID",
	  DOC(DP ST(IMG(GA, "a") IMG(GT, "b"))
	      SN(GT, SHOT(GT, GN) SHOT(GT, GN))),
	  "is used by two shots" },
	{ "empty Snapshots", DOC(DP ST(IMG(GT, "r")) "<Snapshots/>"),
	  "has no <Shot>" },
	{ "two Snapshots",
	  DOC(DP ST(IMG(GT, "r")) SN(GT, SHOT(GT, GN)) SN(GT, SHOT(GT, GN))),
	  "<Snapshots> appears more than once" },
	{ "doctype", "<?xml version=\"1.0\"?>\n<!DOCTYPE x>\n" DOC(ONE),
	  "DOCTYPE" },
	{ "billion laughs",
	  "<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n"
	  "<!ENTITY a \"aaaaaaaaaa\">\n"
	  "<!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">\n"
	  "<!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">\n"
	  "<!ENTITY d \"&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;\">\n"
	  "<!ENTITY e \"&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;\">\n"
	  "<!ENTITY f \"&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;\">\n"
	  "<!ENTITY g \"&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;\">\n"
	  "<!ENTITY h \"&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;\">\n"
	  "<!ENTITY i \"&h;&h;&h;&h;&h;&h;&h;&h;&h;&h;\">\n]>\n"
	  DOC(DP ST(IMG(GT, "&i;"))), "DOCTYPE" },
	{ "external entity",
	  "<?xml version=\"1.0\"?>\n<!DOCTYPE x [\n"
	  "<!ENTITY xxe SYSTEM \"file:///etc/passwd\">\n]>\n"
	  DOC(DP ST(IMG(GT, "&xxe;"))), "DOCTYPE" },
	{ "undefined entity", DOC(DP ST(IMG(GT, "&xxe;"))), "not well-formed" },
	{ "text after root", DOC(ONE) "junk", "not well-formed" },
};

static int parse_str(const char *s, struct pf_dd **dd, struct pf_why *why)
{
	memset(why, 0, sizeof(*why));
	return pf_dd_parse(s, strlen(s), dd, why);
}

/* parse(format(dd)) == dd; also returns the text when @text is set. */
static bool round_trip(const struct pf_dd *dd, char **text)
{
	struct pf_dd *again = NULL;
	struct pf_why why;
	size_t len;
	char *buf;
	bool ok;

	if (pf_dd_format(dd, &buf, &len))
		return false;
	memset(&why, 0, sizeof(why));
	ok = !pf_dd_parse(buf, len, &again, &why) && pf_dd_equal(dd, again) &&
	     strlen(buf) == len;
	if (!ok)
		tap_diag("round trip failed: %s", why.msg);
	pf_dd_free(again);
	if (text)
		*text = buf;
	else
		free(buf);
	return ok;
}

static void test_example_2_2(void)
{
	struct pf_dd *dd = NULL;
	struct pf_why why;
	size_t *chain = NULL, n = 0;
	char *text = NULL;

	check_int(parse_str(ex_2_2, &dd, &why), ==, 0);
	if (!dd)
		return;
	check(!dd->parallels_root);
	check_u64(dd->disk_size_sectors, ==, 20971520);
	check_int(dd->cylinders, ==, 40960);
	check_int(dd->heads, ==, 16);
	check_int(dd->sectors, ==, 32);
	check_int(dd->blocksize, ==, 2048);
	check_str(dd->top_guid, PF_TOP_GUID);
	check_int(dd->n_images, ==, 1);
	check_int(dd->n_shots, ==, 1);
	check_str(dd->images[0].guid, PF_TOP_GUID);
	check_str(dd->images[0].file, "root.hds");
	check_str(dd->shots[0].parent, PF_NONE_GUID);
	check(!dd->shots[0].temporary);
	check_int(pf_dd_chain(dd, &chain, &n, &why), ==, 0);
	check_int(n, ==, 1);
	check(chain && chain[0] == 0);
	free(chain);

	/* we write exactly what ploop writes */
	check(round_trip(dd, &text));
	check_msg(text && !strcmp(text, ex_2_2),
		  "pf_dd_format writes the 2.2 example byte for byte");
	free(text);
	pf_dd_free(dd);
}

static void test_example_2_3(void)
{
	struct pf_dd *dd = NULL;
	struct pf_why why;
	size_t *chain = NULL, n = 0;
	char *text = NULL;

	check_int(parse_str(ex_2_3, &dd, &why), ==, 0);
	if (!dd)
		return;
	check(dd->parallels_root);
	check_int(dd->n_images, ==, 2);
	check_int(dd->n_shots, ==, 2);
	check_str(dd->images[0].guid, GA);
	check_str(dd->images[1].file,
		  "root.hds.{7d5f7c2e-3b1a-4f0e-9e44-1c2d3e4f5a6b}");
	check_str(dd->shots[1].parent, GA);
	check_int(pf_dd_chain(dd, &chain, &n, &why), ==, 0);
	check_int(n, ==, 2);
	check(chain && chain[0] == 0 && chain[1] == 1);
	free(chain);
	check(pf_dd_find_image(dd, GA) == &dd->images[0]);
	check(pf_dd_find_image(dd, "{0E24C2B0-9A0B-4C5E-8D2F-6F1F3E2A9B11}") ==
	      &dd->images[0]);
	check(pf_dd_find_shot(dd, GT) == &dd->shots[1]);
	check(pf_dd_find_shot(dd, GB) == NULL);
	check(pf_dd_find_image(dd, NULL) == NULL);

	check(round_trip(dd, &text));
	check_msg(text && !strcmp(text, ex_2_3),
		  "pf_dd_format writes the 2.3 example byte for byte");
	free(text);
	pf_dd_free(dd);
}

static void test_lenient_forms(void)
{
	static const char spaced[] =
		"<?xml version='1.0' encoding='UTF-8'?>\n"
		"<Parallels_disk_image Version=\"1.0\">\n"
		"<!-- comment -->\n"
		"<Disk_Parameters>\n"
		"  <Disk_size>\n\t 2048 \n</Disk_size>\n"
		"  <Cylinders>4</Cylinders><Heads>16</Heads>\n"
		"  <PhysicalSectorSize>512</PhysicalSectorSize>\n"
		"  <Sectors>32</Sectors>\n"
		"  <Miscellaneous><x>1</x></Miscellaneous>\n"
		"</Disk_Parameters>\n"
		"<StorageData><Storage><Start> 0 </Start><End>2048</End>\n"
		"<Blocksize>128</Blocksize>\n"
		"<Image><GUID> {5FBAABE3-6958-40FF-92A7-860E329AAB41} </GUID>\n"
		"<Type>Compressed</Type><File><![CDATA[disk.hdd.0.hds]]></File>"
		"</Image></Storage></StorageData>\n"
		"<Snapshots><Shot><GUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}"
		"</GUID><ParentGUID>{00000000-0000-0000-0000-000000000000}"
		"</ParentGUID></Shot></Snapshots>\n"
		"</Parallels_disk_image>\n";
	static const char no_snapshots[] = DOC(DP ST(IMG(GA, "root.hds")));
	static const char temps[] =
		DOC(DP ST(IMG(GA, "a") IMG(GB, "b") IMG(GC, "c") IMG(GT, "t"))
		    SN(GT, SHOT(GA, GN)
			   "<Shot><GUID>" GB "</GUID><ParentGUID>" GA
			   "</ParentGUID><TemporaryZero/></Shot>"
			   "<Shot><GUID>" GC "</GUID><ParentGUID>" GB
			   "</ParentGUID><TemporaryZeroSwap/></Shot>"
			   SHOT(GT, GC)));
	static const char amp[] = DOC(DP ST(IMG(GT, "a&amp;b&lt;c")));
	static const char tree[] =
		DOC(DP ST(IMG(GA, "a") IMG(GB, "b") IMG(GC, "c") IMG(GT, "t"))
		    SN(GT, SHOT(GA, GN) SHOT(GB, GA) SHOT(GC, GA)
			   SHOT(GT, GB)));
	size_t *chain = NULL, n = 0;
	struct pf_dd *dd = NULL;
	struct pf_why why;

	check_int(parse_str(spaced, &dd, &why), ==, 0);
	if (dd) {
		check(dd->parallels_root);
		check_u64(dd->disk_size_sectors, ==, 2048);
		check_str(dd->images[0].guid, PF_TOP_GUID);
		check_str(dd->images[0].file, "disk.hdd.0.hds");
		check_str(dd->top_guid, PF_TOP_GUID);
		check(round_trip(dd, NULL));
	}
	pf_dd_free(dd);

	/* no <Snapshots>: the lone image is the top, given a base shot */
	check_int(parse_str(no_snapshots, &dd, &why), ==, 0);
	if (dd) {
		check_str(dd->top_guid, GA);
		check_int(dd->n_shots, ==, 1);
		check_str(dd->shots[0].guid, GA);
		check_str(dd->shots[0].parent, PF_NONE_GUID);
		check(round_trip(dd, NULL));
	}
	pf_dd_free(dd);

	check_int(parse_str(temps, &dd, &why), ==, 0);
	if (dd) {
		check(!dd->shots[0].temporary);
		check(dd->shots[1].temporary);
		check(dd->shots[2].temporary);
		check(!dd->shots[3].temporary);
		check(round_trip(dd, NULL));
	}
	pf_dd_free(dd);

	/* predefined entities are plain text, and are escaped on output */
	check_int(parse_str(amp, &dd, &why), ==, 0);
	if (dd) {
		check_str(dd->images[0].file, "a&b<c");
		check(round_trip(dd, NULL));
	}
	pf_dd_free(dd);

	/* a side branch (c) is valid but not on the active chain */
	check_int(parse_str(tree, &dd, &why), ==, 0);
	if (dd) {
		check_int(pf_dd_chain(dd, &chain, &n, &why), ==, 0);
		check_int(n, ==, 3);
		check(n == 3 && chain[0] == 0 && chain[1] == 1 &&
		      chain[2] == 3);
		free(chain);
		check(round_trip(dd, NULL));
	}
	pf_dd_free(dd);
}

static void test_hostile(void)
{
	size_t i;

	for (i = 0; i < PF_ARRAY_SIZE(hostile); i++) {
		const struct hostile *h = &hostile[i];
		struct pf_dd *dd = (struct pf_dd *)1;
		struct pf_why why;
		int ret;

		memset(&why, 0, sizeof(why));
		ret = pf_dd_parse(h->doc, strlen(h->doc), &dd, &why);
		check_msg(ret == -EINVAL && dd == NULL && why.msg[0] &&
			  strstr(why.msg, h->want) && !strchr(why.msg, '\n'),
			  "hostile \"%s\": %d \"%s\" (want \"%s\")", h->name,
			  ret, why.msg, h->want);
	}
}

static void test_parse_limits(void)
{
	struct pf_dd *dd = NULL;
	struct pf_why why;
	char *big;

	memset(&why, 0, sizeof(why));
	check_int(pf_dd_parse("", 0, &dd, &why), ==, -EINVAL);
	check(why.msg[0] != '\0');

	/* a NUL inside the buffer must not end the document early */
	memset(&why, 0, sizeof(why));
	check_int(pf_dd_parse(NUL_DOC, sizeof(NUL_DOC) - 1, &dd, &why), ==,
		  -EINVAL);
	check(strstr(why.msg, "not well-formed") != NULL);

	big = malloc(PF_DD_MAX_BYTES + 1);
	if (!big)
		return;
	memset(big, ' ', PF_DD_MAX_BYTES + 1);
	memset(&why, 0, sizeof(why));
	check_int(pf_dd_parse(big, PF_DD_MAX_BYTES + 1, &dd, &why), ==,
		  -EINVAL);
	check(why.msg[0] != '\0');
	free(big);
}

static void test_guids_and_names(void)
{
	char a[PF_GUID_LEN + 1], b[PF_GUID_LEN + 1];
	char longname[300];
	size_t i;

	pf_guid_new(a);
	pf_guid_new(b);
	check(pf_guid_valid(a));
	check(strcmp(a, b) != 0);
	check_int(strlen(a), ==, PF_GUID_LEN);
	for (i = 0; a[i]; i++)
		if (a[i] >= 'A' && a[i] <= 'F')
			break;
	check_msg(a[i] == '\0', "pf_guid_new is lower case: %s", a);
	check(pf_guid_valid(PF_TOP_GUID));
	check(pf_guid_valid("{5FBAABE3-6958-40FF-92A7-860E329AAB41}"));
	check(!pf_guid_valid(NULL));
	check(!pf_guid_valid(""));
	check(!pf_guid_valid("{5fbaabe3-6958-40ff-92a7-860e329aab41"));
	check(!pf_guid_valid("{5fbaabe3-6958-40ff-92a7-860e329aab41}x"));
	check(!pf_guid_valid("(5fbaabe3-6958-40ff-92a7-860e329aab41)"));
	check(!pf_guid_valid("{5fbaabe3x6958-40ff-92a7-860e329aab41}"));
	/* the descriptor's form only: a view's name is not one */
	check(!pf_guid_valid("5fbaabe3-6958-40ff-92a7-860e329aab41"));

	check(pf_dd_file_name_valid("root.hds"));
	check(pf_dd_file_name_valid("root.hds.{7d5f7c2e-3b1a-4f0e}"));
	check(pf_dd_file_name_valid("..hidden"));
	check(!pf_dd_file_name_valid(NULL));
	check(!pf_dd_file_name_valid(""));
	check(!pf_dd_file_name_valid("."));
	check(!pf_dd_file_name_valid(".."));
	check(!pf_dd_file_name_valid("../x"));
	check(!pf_dd_file_name_valid("a/b"));
	check(!pf_dd_file_name_valid("/abs"));
	check(!pf_dd_file_name_valid("a\nb"));
	check(!pf_dd_file_name_valid("\xff\xfe"));
	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	check(!pf_dd_file_name_valid(longname));
	pf_dd_free(NULL);
}

/* GUIDs as users copy them: one canonical form, the bad ones refused */
static void test_guid_canon(void)
{
	static const char *const good[] = {
		"{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}",
		"{0E24C2B0-9A0B-4C5E-8D2F-6F1F3E2A9B11}",
		"0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11",
		"0E24C2B0-9A0B-4C5E-8D2F-6F1F3E2A9B11",
		"{0e24C2b0-9A0b-4c5E-8d2F-6f1F3e2A9b11}",
	};
	static const char *const bad[] = {
		"",
		"{}",
		"0e24c2b0",
		/* wrong length */
		"{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b1}",
		"{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b111}",
		"0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b1",
		"0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b111",
		"{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11} ",
		" 0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11",
		/* bad hex, dashes moved or missing */
		"{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b1g}",
		"0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b1G",
		"0x24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11",
		"0e24c2b09-a0b-4c5e-8d2f-6f1f3e2a9b11",
		"0e24c2b0_9a0b_4c5e_8d2f_6f1f3e2a9b11",
		"0e24c2b009a0b04c5e08d2f06f1f3e2a9b11",
		/* braces on one side only, or the wrong ones */
		"{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11",
		"0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}",
		"{e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11",
		"0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b1}",
		"{{0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11}",
		"(0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11)",
		"[0e24c2b0-9a0b-4c5e-8d2f-6f1f3e2a9b11]",
	};
	char out[PF_GUID_LEN + 1];
	size_t i;

	for (i = 0; i < PF_ARRAY_SIZE(good); i++) {
		memset(out, 'x', sizeof(out));
		check_msg(pf_guid_canon(good[i], out) == 0 && !strcmp(out, GA),
			  "canon \"%s\" -> \"%.*s\"", good[i],
			  (int)sizeof(out) - 1, out);
	}
	for (i = 0; i < PF_ARRAY_SIZE(bad); i++) {
		memset(out, 'x', sizeof(out));
		check_msg(pf_guid_canon(bad[i], out) == -EINVAL && !out[0],
			  "canon refuses \"%s\"", bad[i]);
	}
	check_int(pf_guid_canon(NULL, out), ==, -EINVAL);
	check_int(pf_guid_canon(PF_TOP_GUID, out), ==, 0);
	check_str(out, PF_TOP_GUID);
	check_int(pf_guid_canon("00000000-0000-0000-0000-000000000000", out),
		  ==, 0);
	check_str(out, PF_NONE_GUID);
}

static void test_snapshots(void)
{
	struct pf_dd *dd = NULL, *old = NULL;
	struct pf_why why;
	size_t *chain = NULL, n = 0, i;
	char g[PF_GUID_LEN + 1], file[64];
	int ret;

	check_int(pf_dd_new(20971520, 2048, 16, 40960, "root.hds", &dd), ==, 0);
	if (!dd)
		return;
	check_int(dd->sectors, ==, 32);
	check_str(dd->top_guid, PF_TOP_GUID);
	check(round_trip(dd, NULL));

	check_int(pf_dd_add_snapshot(dd, GA, "root.hds.1"), ==, 0);
	/* upper case in, lower case stored */
	check_int(pf_dd_add_snapshot(dd,
				     "{1B2C3D4E-5F60-4172-8394-A5B6C7D8E9F0}",
				     "root.hds.2"), ==, 0);
	check_int(dd->n_images, ==, 3);
	check_int(dd->n_shots, ==, 3);
	check_str(dd->top_guid, PF_TOP_GUID);
	check_str(dd->images[0].guid, GA);
	check_str(dd->images[0].file, "root.hds");
	check_str(dd->images[1].guid, GB);	/* stored lower case */
	check_str(dd->images[1].file, "root.hds.1");
	check_str(dd->images[2].guid, PF_TOP_GUID);
	check_str(dd->images[2].file, "root.hds.2");
	check_str(dd->shots[0].parent, PF_NONE_GUID);
	check_str(dd->shots[1].parent, GA);
	check_str(dd->shots[2].parent, GB);
	check_int(pf_dd_chain(dd, &chain, &n, &why), ==, 0);
	check_int(n, ==, 3);
	if (n == 3) {
		check_str(dd->images[chain[0]].file, "root.hds");
		check_str(dd->images[chain[1]].file, "root.hds.1");
		check_str(dd->images[chain[2]].file, "root.hds.2");
	}
	free(chain);
	check(round_trip(dd, NULL));

	/* refusals leave the descriptor as it was */
	check_int(pf_dd_add_snapshot(dd, "{bad}", "x"), ==, -EINVAL);
	check_int(pf_dd_add_snapshot(dd, GA, "x"), ==, -EINVAL);
	check_int(pf_dd_add_snapshot(dd, PF_TOP_GUID, "x"), ==, -EINVAL);
	check_int(pf_dd_add_snapshot(dd, PF_NONE_GUID, "x"), ==, -EINVAL);
	check_int(pf_dd_add_snapshot(dd, GC, "../x"), ==, -EINVAL);
	check_int(pf_dd_add_snapshot(dd, GC, "root.hds.1"), ==, -EINVAL);
	check_int(dd->n_images, ==, 3);

	for (i = 3, ret = 0; i < PF_MAX_DELTAS && !ret; i++) {
		pf_guid_new(g);
		snprintf(file, sizeof(file), "root.hds.%zu", i);
		ret = pf_dd_add_snapshot(dd, g, file);
	}
	check_int(ret, ==, 0);
	check_int(dd->n_images, ==, PF_MAX_DELTAS);
	pf_guid_new(g);
	check_int(pf_dd_add_snapshot(dd, g, "one.too.many"), ==, -E2BIG);
	check_int(pf_dd_chain(dd, &chain, &n, &why), ==, 0);
	check_int(n, ==, PF_MAX_DELTAS);
	free(chain);
	check(round_trip(dd, NULL));
	pf_dd_free(dd);

	/* old format: the top is not under PF_TOP_GUID */
	check_int(parse_str(DOC(DP ST(IMG(GA, "root.hds"))
				SN(GA, SHOT(GA, GN))), &old, &why), ==, 0);
	if (!old)
		return;
	check_int(pf_dd_add_snapshot(old, GB, "root.hds.1"), ==, 0);
	check_str(old->images[0].guid, GB);
	check_str(old->shots[0].guid, GB);
	check_str(old->images[1].guid, PF_TOP_GUID);
	check_str(old->shots[1].parent, GB);
	check_str(old->top_guid, PF_TOP_GUID);
	check(round_trip(old, NULL));
	pf_dd_free(old);

	check_int(pf_dd_new(0, 2048, 16, 1, "r", &dd), ==, -EINVAL);
	check_int(pf_dd_new(8, 7, 16, 1, "r", &dd), ==, -EINVAL);
	check_int(pf_dd_new(8, 2048, 16, 1, "a/b", &dd), ==, -EINVAL);
	check(dd == NULL);
}

static void test_store_load(void)
{
	char tmpl[] = "/tmp/test_descriptor.XXXXXX";
	struct pf_dd *dd = NULL, *back = NULL;
	bool committed = false;
	struct pf_why why;
	struct stat st;
	int dirfd, fd;
	mode_t mask;
	char *big;

	if (!mkdtemp(tmpl)) {
		check_msg(0, "mkdtemp: %s", strerror(errno));
		return;
	}
	dirfd = open(tmpl, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	check(dirfd >= 0);
	if (dirfd < 0)
		return;

	check_int(pf_dd_load(dirfd, &back, &why), ==, -ENOENT);
	check(back == NULL);

	check_int(pf_dd_new(20971520, 2048, 16, 40960, PF_BASE_NAME, &dd), ==,
		  0);
	if (!dd)
		goto out_dir;
	/* a new descriptor: ploop's 0644, less the umask, whatever mode a
	 * tmp file left by a crash has; and a tmp that is a hard link to
	 * another file is replaced, not written through */
	mask = umask(027);
	fd = openat(dirfd, "other", O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	check(fd >= 0 && pf_pwrite_full(fd, "other", 5, 0) == 0);
	if (fd >= 0)
		close(fd);
	check(linkat(dirfd, "other", dirfd, PF_DD_TMP_NAME, 0) == 0);
	check_int(pf_dd_replace(dirfd, dd, &committed), ==, 0);
	check(fstatat(dirfd, "other", &st, 0) == 0 && st.st_size == 5 &&
	      st.st_nlink == 1 && (st.st_mode & 0777) == 0600);
	check(unlinkat(dirfd, "other", 0) == 0);
	check(faccessat(dirfd, PF_DD_TMP_NAME, F_OK, 0) < 0 && errno == ENOENT);
	check(fstatat(dirfd, PF_DD_NAME, &st, 0) == 0);
	check_int(st.st_mode & 0777, ==, PF_DD_MODE & ~027);
	check_int(pf_dd_load(dirfd, &back, &why), ==, 0);
	check(back && pf_dd_equal(dd, back));
	pf_dd_free(back);
	back = NULL;

	/* a second store replaces the first, keeping its mode whole: the
	 * umask does not narrow it */
	check(fchmodat(dirfd, PF_DD_NAME, 0666, 0) == 0);
	check_int(pf_dd_add_snapshot(dd, GA, "root.hds.1"), ==, 0);
	check_int(pf_dd_replace(dirfd, dd, &committed), ==, 0);
	check(faccessat(dirfd, PF_DD_TMP_NAME, F_OK, 0) < 0 && errno == ENOENT);
	check(fstatat(dirfd, PF_DD_NAME, &st, 0) == 0);
	check_int(st.st_mode & 0777, ==, 0666);
	check(fchmodat(dirfd, PF_DD_NAME, 0600, 0) == 0);
	check_int(pf_dd_replace(dirfd, dd, &committed), ==, 0);
	check(fstatat(dirfd, PF_DD_NAME, &st, 0) == 0);
	check_int(st.st_mode & 0777, ==, 0600);
	umask(mask);
	check_int(pf_dd_load(dirfd, &back, &why), ==, 0);
	check(back && pf_dd_equal(dd, back));
	pf_dd_free(back);
	back = NULL;

	/* a failed store leaves the old descriptor */
	check(mkdirat(dirfd, PF_DD_TMP_NAME, 0700) == 0);
	check_int(pf_dd_add_snapshot(dd, GB, "root.hds.2"), ==, 0);
	check(pf_dd_replace(dirfd, dd, &committed) < 0);
	check(!committed);
	check(unlinkat(dirfd, PF_DD_TMP_NAME, AT_REMOVEDIR) == 0);
	check_int(pf_dd_load(dirfd, &back, &why), ==, 0);
	check(back && back->n_images == 2);
	pf_dd_free(back);
	back = NULL;

	/* too large, not regular, a symlink */
	check(unlinkat(dirfd, PF_DD_NAME, 0) == 0);
	fd = openat(dirfd, PF_DD_NAME, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	big = calloc(1, PF_DD_MAX_BYTES + 1);
	check(fd >= 0 && big);
	if (fd >= 0 && big)
		check_int(pf_pwrite_full(fd, big, PF_DD_MAX_BYTES + 1, 0), ==,
			  0);
	if (fd >= 0)
		close(fd);
	free(big);
	memset(&why, 0, sizeof(why));
	check_int(pf_dd_load(dirfd, &back, &why), ==, -EFBIG);
	check(why.msg[0] != '\0');
	check(unlinkat(dirfd, PF_DD_NAME, 0) == 0);

	check(mkdirat(dirfd, PF_DD_NAME, 0700) == 0);
	memset(&why, 0, sizeof(why));
	check_int(pf_dd_load(dirfd, &back, &why), ==, -EINVAL);
	check(why.msg[0] != '\0');
	check(unlinkat(dirfd, PF_DD_NAME, AT_REMOVEDIR) == 0);

	/* a FIFO must not block the open */
	check(mkfifoat(dirfd, PF_DD_NAME, 0600) == 0);
	memset(&why, 0, sizeof(why));
	check_int(pf_dd_load(dirfd, &back, &why), ==, -EINVAL);
	check(strstr(why.msg, "not a regular file") != NULL);
	check(unlinkat(dirfd, PF_DD_NAME, 0) == 0);

	check(symlinkat("elsewhere.xml", dirfd, PF_DD_NAME) == 0);
	check(pf_dd_load(dirfd, &back, &why) < 0);
	check(back == NULL);
	check(unlinkat(dirfd, PF_DD_NAME, 0) == 0);

	/* an empty file is a bad descriptor */
	fd = openat(dirfd, PF_DD_NAME, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	if (fd >= 0)
		close(fd);
	memset(&why, 0, sizeof(why));
	check_int(pf_dd_load(dirfd, &back, &why), ==, -EINVAL);
	check(why.msg[0] != '\0');
	check(unlinkat(dirfd, PF_DD_NAME, 0) == 0);

out_dir:
	pf_dd_free(dd);
	close(dirfd);
	check(rmdir(tmpl) == 0);
}

static int read_file(const char *path, char **buf, size_t *len)
{
	struct stat st;
	int fd, ret;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		goto out_close;
	}
	*len = (size_t)st.st_size;
	*buf = malloc(*len + 1);
	if (!*buf) {
		ret = -ENOMEM;
		goto out_close;
	}
	ret = pf_pread_full(fd, *buf, *len, 0);
	if (ret) {
		free(*buf);
		*buf = NULL;
	}
out_close:
	close(fd);
	return ret;
}

/* Formatting what formatting @dd wrote gives the same text: what is
 * kept is kept once, not duplicated or moved by each rewrite. */
static bool formats_again(const struct pf_dd *dd)
{
	struct pf_dd *again = NULL;
	char *one = NULL, *two = NULL;
	struct pf_why why;
	size_t len;
	bool ok;

	memset(&why, 0, sizeof(why));
	ok = !pf_dd_format(dd, &one, &len) &&
	     !pf_dd_parse(one, len, &again, &why) &&
	     !pf_dd_format(again, &two, &len) && !strcmp(one, two);
	if (!ok)
		tap_diag("formatted twice:\n%s\n%s", one ? one : "(none)",
			 two ? two : "(none)");
	pf_dd_free(again);
	free(one);
	free(two);
	return ok;
}

/* A descriptor with @depth nested unknown elements, malloc'ed. */
static char *deep_doc(size_t depth)
{
	static const char head[] = "<?xml version=\"1.0\"?>\n"
				   "<Virtuozzo_disk_image>" ONE;
	static const char tail[] = "</Virtuozzo_disk_image>\n";
	char *doc = malloc(sizeof(head) + depth * 7 + sizeof(tail)), *p;
	size_t i;

	if (!doc)
		return NULL;
	p = doc + sprintf(doc, "%s", head);
	for (i = 0; i < depth; i++)
		p += sprintf(p, "<d>");
	for (i = 0; i < depth; i++)
		p += sprintf(p, "</d>");
	sprintf(p, "%s", tail);
	return doc;
}

/* The parser's depth limit, said in our words; below it, kept */
static void test_deep(void)
{
	struct pf_dd *dd = NULL;
	struct pf_why why;
	char *doc;

	doc = deep_doc(300);
	check(doc != NULL);
	if (doc) {
		check_int(parse_str(doc, &dd, &why), ==, -EINVAL);
		check_msg(strstr(why.msg, "descriptor too deep at line 2") &&
			  !strstr(why.msg, "XML_PARSE"), "why: %s", why.msg);
	}
	free(doc);
	doc = deep_doc(200);
	check(doc != NULL);
	if (doc) {
		check_int(parse_str(doc, &dd, &why), ==, 0);
		if (dd)
			check(round_trip(dd, NULL) && formats_again(dd));
		pf_dd_free(dd);
	}
	free(doc);
}

static int corpus_file(const struct dirent *de)
{
	return !fnmatch("good-*.xml", de->d_name, 0) ||
	       !fnmatch("bad-*.xml", de->d_name, 0);
}

static void test_corpus_file(const char *dir, const char *name,
			     size_t *n_good, size_t *n_bad)
{
	bool good = !strncmp(name, "good-", 5);
	struct pf_dd *dd = NULL;
	struct pf_why why;
	char path[4096];
	char *buf = NULL;
	size_t len = 0;
	int ret;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	ret = read_file(path, &buf, &len);
	check_msg(ret == 0, "read %s: %d", path, ret);
	if (ret)
		return;
	memset(&why, 0, sizeof(why));
	ret = pf_dd_parse(buf, len, &dd, &why);
	if (good) {
		(*n_good)++;
		check_msg(ret == 0 && dd, "%s parses: %d %s", name, ret,
			  why.msg);
		if (dd)
			check_msg(round_trip(dd, NULL) && formats_again(dd),
				  "%s round trip", name);
	} else {
		(*n_bad)++;
		/* in our words: no libxml2 option is named to the user */
		check_msg(ret == -EINVAL && !dd && why.msg[0] &&
			  !strchr(why.msg, '\n') &&
			  !strstr(why.msg, "XML_PARSE"),
			  "%s is refused: %d \"%s\"", name, ret, why.msg);
	}
	pf_dd_free(dd);
	free(buf);
}

static void test_corpus(void)
{
	const char *dir = getenv("PF_CORPUS_DIR");
	size_t n_good = 0, n_bad = 0;
	struct dirent **list;
	int n, i;

	if (!dir || !*dir)
		dir = "tests/corpus/dd";
	/* sorted, so the TAP numbering is stable from run to run */
	n = scandir(dir, &list, corpus_file, alphasort);
	check_msg(n >= 0, "scan corpus %s: %s", dir,
		  n >= 0 ? "ok" : strerror(errno));
	if (n < 0)
		return;
	for (i = 0; i < n; i++) {
		test_corpus_file(dir, list[i]->d_name, &n_good, &n_bad);
		free(list[i]);
	}
	free(list);
	check_msg(n_good >= 5 && n_bad >= 20 && n_good + n_bad >= 25,
		  "corpus has %zu good and %zu bad files", n_good, n_bad);
}

/* Snapshot edits */

#define GD	"{3d4e5f60-7182-4394-a5b6-c7d8e9f0a1b2}"
#define GA_UP	"{0E24C2B0-9A0B-4C5E-8D2F-6F1F3E2A9B11}"
/* as a snapshot view is named: no braces */
#define GA_BARE	"0E24C2B0-9A0B-4C5E-8D2F-6F1F3E2A9B11"
#define GB_BARE	"1b2c3d4e-5f60-4172-8394-a5b6c7d8e9f0"

/* base a (GA) <- b (GB) <- top t (GT) */
static const char chain3[] =
	DOC(DP ST(IMG(GA, "a") IMG(GB, "b") IMG(GT, "t"))
	    SN(GT, SHOT(GA, GN) SHOT(GB, GA) SHOT(GT, GB)));
/* a side branch: a <- b <- t active, a <- c off the chain */
static const char tree4[] =
	DOC(DP ST(IMG(GA, "a") IMG(GB, "b") IMG(GC, "c") IMG(GT, "t"))
	    SN(GT, SHOT(GA, GN) SHOT(GB, GA) SHOT(GC, GA) SHOT(GT, GB)));

/* pf_dd_format of @dd, malloc'ed (NULL on failure). */
static char *text_of(const struct pf_dd *dd)
{
	size_t len;
	char *buf;

	return pf_dd_format(dd, &buf, &len) ? NULL : buf;
}

/* @dd formats to @before: an edit that failed changed nothing. */
static bool unchanged(const struct pf_dd *dd, const char *before)
{
	char *now = text_of(dd);
	bool same = now && before && !strcmp(now, before);

	free(now);
	return same;
}

/* The files of the active chain, base first, joined by ' '. */
static const char *chain_files(const struct pf_dd *dd)
{
	static char buf[512];
	struct pf_why why;
	size_t *chain = NULL, n = 0, i;

	memset(&why, 0, sizeof(why));
	buf[0] = '\0';
	if (pf_dd_chain(dd, &chain, &n, &why)) {
		snprintf(buf, sizeof(buf), "error: %s", why.msg);
		return buf;
	}
	for (i = 0; i < n; i++) {
		size_t l = strlen(buf);

		snprintf(buf + l, sizeof(buf) - l, "%s%s", i ? " " : "",
			 dd->images[chain[i]].file);
	}
	free(chain);
	return buf;
}

static void test_set_temporary(void)
{
	struct pf_dd *dd = NULL;
	struct pf_why why;
	char *before, *text;

	check_int(parse_str(chain3, &dd, &why), ==, 0);
	if (!dd)
		return;
	check_int(pf_dd_set_temporary(dd, GB, true), ==, 0);
	check(pf_dd_find_shot(dd, GB)->temporary);
	check(!pf_dd_find_shot(dd, GA)->temporary);
	text = text_of(dd);
	check(text && strstr(text, "<ParentGUID>" GA "</ParentGUID>\n"
				   "      <Temporary/>\n"));
	free(text);
	check(round_trip(dd, NULL));
	/* idempotent, and any case of the GUID */
	check_int(pf_dd_set_temporary(dd, "{1B2C3D4E-5F60-4172-8394-A5B6C7D8E9F0}",
				      true), ==, 0);
	check(pf_dd_find_shot(dd, GB)->temporary);
	check_int(pf_dd_set_temporary(dd, GA_BARE, true), ==, 0);
	check(pf_dd_find_shot(dd, GA)->temporary);
	/* the chain is still the chain: a temporary shot is part of it */
	check_str(chain_files(dd), "a b t");

	/* refusals leave the descriptor as it was */
	before = text_of(dd);
	check_int(pf_dd_set_temporary(dd, GT, true), ==, -EINVAL);
	check_int(pf_dd_set_temporary(dd, GC, true), ==, -ENOENT);
	check_int(pf_dd_set_temporary(dd, GN, true), ==, -ENOENT);
	check_int(pf_dd_set_temporary(dd, "{nope}", true), ==, -EINVAL);
	check_int(pf_dd_set_temporary(dd, NULL, false), ==, -EINVAL);
	check_int(pf_dd_set_temporary(dd, "{" GB_BARE, false), ==, -EINVAL);
	check_int(pf_dd_set_temporary(dd, GC, false), ==, -ENOENT);
	check(unchanged(dd, before));
	free(before);

	/* clearing is always allowed, also on the top (a no-op there) */
	check_int(pf_dd_set_temporary(dd, GT, false), ==, 0);
	check_int(pf_dd_set_temporary(dd, GB, false), ==, 0);
	check_int(pf_dd_set_temporary(dd, GA, false), ==, 0);
	check(!pf_dd_find_shot(dd, GA)->temporary &&
	      !pf_dd_find_shot(dd, GB)->temporary);
	text = text_of(dd);
	check(text && !strstr(text, "Temporary"));
	free(text);
	pf_dd_free(dd);
}

static void test_children_parent(void)
{
	struct pf_dd *dd = NULL;
	struct pf_why why;

	check_int(parse_str(tree4, &dd, &why), ==, 0);
	if (!dd)
		return;
	check_int(pf_dd_children(dd, GA), ==, 2);
	check_int(pf_dd_children(dd, GA_UP), ==, 2);
	check_int(pf_dd_children(dd, GA_BARE), ==, 2);
	check_int(pf_dd_children(dd, GA_BARE "}"), ==, 0);
	check_int(pf_dd_children(dd, GB), ==, 1);
	check_int(pf_dd_children(dd, GC), ==, 0);
	check_int(pf_dd_children(dd, GT), ==, 0);
	check_int(pf_dd_children(dd, GN), ==, 1);	/* one base */
	check_int(pf_dd_children(dd, GD), ==, 0);
	check_int(pf_dd_children(dd, NULL), ==, 0);
	check_int(pf_dd_children(NULL, GA), ==, 0);
	check_str(pf_dd_parent(dd, GA), GN);
	check_str(pf_dd_parent(dd, GB), GA);
	check_str(pf_dd_parent(dd, GC), GA);
	check_str(pf_dd_parent(dd, GT), GB);
	check_str(pf_dd_parent(dd, GA_UP), GN);
	check_str(pf_dd_parent(dd, GB_BARE), GA);
	check(pf_dd_find_shot(dd, GA_BARE) == pf_dd_find_shot(dd, GA));
	check(pf_dd_find_image(dd, GB_BARE) == pf_dd_find_image(dd, GB));
	check(pf_dd_find_image(dd, "{" GB_BARE) == NULL);
	check(pf_dd_parent(dd, GD) == NULL);
	check(pf_dd_parent(dd, NULL) == NULL);
	check(pf_dd_parent(NULL, GA) == NULL);
	pf_dd_free(dd);
}

static void test_delete_snapshot(void)
{
	struct pf_dd *dd = NULL;
	struct pf_why why;
	char *gone = NULL, *before;

	/* merged down: the child (the top) takes the parent's file */
	check_int(parse_str(chain3, &dd, &why), ==, 0);
	if (!dd)
		return;
	check_int(pf_dd_delete_snapshot(dd, GB, true, &gone), ==, 0);
	check_str(gone, "t");
	free(gone);
	check_int(dd->n_images, ==, 2);
	check_int(dd->n_shots, ==, 2);
	check(pf_dd_find_shot(dd, GB) == NULL &&
	      pf_dd_find_image(dd, GB) == NULL);
	check_str(pf_dd_find_image(dd, GT)->file, "b");
	check_str(pf_dd_parent(dd, GT), GA);
	check_str(dd->top_guid, GT);
	check_str(chain_files(dd), "a b");
	check(round_trip(dd, NULL));
	/* and the base, given in upper case: the top becomes the base */
	check_int(pf_dd_delete_snapshot(dd, GA_UP, true, &gone), ==, 0);
	check_str(gone, "b");
	free(gone);
	check_str(pf_dd_find_image(dd, GT)->file, "a");
	check_str(pf_dd_parent(dd, GT), GN);
	check_int(dd->n_images, ==, 1);
	check_str(chain_files(dd), "a");
	check(round_trip(dd, NULL));
	pf_dd_free(dd);

	/* copied up: the child keeps its file, the parent's goes */
	check_int(parse_str(chain3, &dd, &why), ==, 0);
	if (!dd)
		return;
	check_int(pf_dd_delete_snapshot(dd, GB_BARE, false, &gone), ==, 0);
	check_str(gone, "b");
	free(gone);
	check_str(pf_dd_find_image(dd, GT)->file, "t");
	check_str(pf_dd_parent(dd, GT), GA);
	check_str(chain_files(dd), "a t");
	check(round_trip(dd, NULL));
	/* a snapshot below the top: its child is not the top */
	pf_dd_free(dd);
	check_int(parse_str(chain3, &dd, &why), ==, 0);
	if (!dd)
		return;
	check_int(pf_dd_delete_snapshot(dd, GA, true, &gone), ==, 0);
	check_str(gone, "b");
	free(gone);
	check_str(pf_dd_find_image(dd, GB)->file, "a");
	check_str(pf_dd_parent(dd, GB), GN);
	check_str(chain_files(dd), "a t");
	check(round_trip(dd, NULL));
	pf_dd_free(dd);

	/* refusals leave the descriptor as it was */
	check_int(parse_str(tree4, &dd, &why), ==, 0);
	if (!dd)
		return;
	before = text_of(dd);
	gone = (char *)1;
	check_int(pf_dd_delete_snapshot(dd, GA, true, &gone), ==, -EMLINK);
	check(gone == NULL);
	check_int(pf_dd_delete_snapshot(dd, GA, false, &gone), ==, -EMLINK);
	check_int(pf_dd_delete_snapshot(dd, GT, true, &gone), ==, -EINVAL);
	check_int(pf_dd_delete_snapshot(dd, GT, false, &gone), ==, -EINVAL);
	check_int(pf_dd_delete_snapshot(dd, GD, true, &gone), ==, -ENOENT);
	check_int(pf_dd_delete_snapshot(dd, GN, true, &gone), ==, -ENOENT);
	check_int(pf_dd_delete_snapshot(dd, "{bad}", true, &gone), ==,
		  -EINVAL);
	check_int(pf_dd_delete_snapshot(dd, NULL, true, &gone), ==, -EINVAL);
	check(gone == NULL);
	check(unchanged(dd, before));
	free(before);

	/* a leaf off the chain is simply removed, as ploop does */
	check_int(pf_dd_set_temporary(dd, GC, true), ==, 0);
	check_int(pf_dd_delete_snapshot(dd, GC, true, &gone), ==, 0);
	check_str(gone, "c");
	free(gone);
	check_int(dd->n_images, ==, 3);
	check_int(pf_dd_children(dd, GA), ==, 1);
	check_str(chain_files(dd), "a b t");
	check(round_trip(dd, NULL));
	/* a temporary snapshot (an interrupted delete) can be completed */
	check_int(pf_dd_set_temporary(dd, GB, true), ==, 0);
	check_int(pf_dd_delete_snapshot(dd, GB, true, &gone), ==, 0);
	check_str(gone, "t");
	free(gone);
	check_str(chain_files(dd), "a b");
	check(round_trip(dd, NULL));
	pf_dd_free(dd);
}

static void test_switch(void)
{
	struct pf_dd *dd = NULL, *back = NULL;
	struct pf_why why;
	char *old = NULL, *before, *text = NULL;
	char g[PF_GUID_LEN + 1], file[64], mid[PF_GUID_LEN + 1];
	size_t i;
	int ret;

	check_int(parse_str(chain3, &dd, &why), ==, 0);
	if (!dd)
		return;
	/* back to the base: b stays as a side branch */
	check_int(pf_dd_switch(dd, GA_UP, "n1", &old), ==, 0);
	check_str(old, "t");
	free(old);
	check_int(dd->n_images, ==, 3);
	check_int(dd->n_shots, ==, 3);
	check_str(dd->top_guid, GT);
	check_str(dd->images[2].guid, GT);	/* appended, as ploop does */
	check_str(dd->images[2].file, "n1");
	check_str(dd->shots[2].guid, GT);
	check_str(pf_dd_parent(dd, GT), GA);
	check_str(pf_dd_parent(dd, GB), GA);
	check_str(pf_dd_find_image(dd, GB)->file, "b");
	check(!pf_dd_find_shot(dd, GT)->temporary);
	check_int(pf_dd_children(dd, GA), ==, 2);
	/* the branch is valid: the chain skips b, format/parse keeps it */
	check_str(chain_files(dd), "a n1");
	check(round_trip(dd, &text));
	pf_dd_free(back);
	back = NULL;
	check_int(parse_str(text, &back, &why), ==, 0);
	if (back)
		check_str(chain_files(back), "a n1");
	pf_dd_free(back);
	free(text);

	/* over to the side branch: n1 is discarded, the chain is a b n2 */
	check_int(pf_dd_switch(dd, GB, "n2", &old), ==, 0);
	check_str(old, "n1");
	free(old);
	check_str(chain_files(dd), "a b n2");
	check_int(dd->n_images, ==, 3);
	check(round_trip(dd, NULL));

	/* refusals leave the descriptor as it was */
	check_int(pf_dd_set_temporary(dd, GA, true), ==, 0);
	before = text_of(dd);
	old = (char *)1;
	check_int(pf_dd_switch(dd, GA, "n3", &old), ==, -EINVAL);
	check(old == NULL);
	check_int(pf_dd_switch(dd, GT, "n3", &old), ==, -EINVAL);
	check_int(pf_dd_switch(dd, GC, "n3", &old), ==, -ENOENT);
	check_int(pf_dd_switch(dd, GN, "n3", &old), ==, -ENOENT);
	check_int(pf_dd_switch(dd, "{bad}", "n3", &old), ==, -EINVAL);
	check_int(pf_dd_switch(dd, NULL, "n3", &old), ==, -EINVAL);
	check_int(pf_dd_switch(dd, GB, "../n3", &old), ==, -EINVAL);
	check_int(pf_dd_switch(dd, GB, "", &old), ==, -EINVAL);
	check_int(pf_dd_switch(dd, GB, NULL, &old), ==, -EINVAL);
	check_int(pf_dd_switch(dd, GB, "a", &old), ==, -EINVAL);
	check_int(pf_dd_switch(dd, GB, "n2", &old), ==, -EINVAL);
	check(old == NULL);
	check(unchanged(dd, before));
	free(before);
	pf_dd_free(dd);

	/* a shot hanging below the top would be orphaned */
	check_int(parse_str(DOC(DP ST(IMG(GA, "a") IMG(GT, "t") IMG(GC, "c"))
				SN(GT, SHOT(GA, GN) SHOT(GT, GA)
				       SHOT(GC, GT))), &dd, &why), ==, 0);
	if (dd) {
		before = text_of(dd);
		check_int(pf_dd_switch(dd, GA, "n", &old), ==, -EINVAL);
		check(unchanged(dd, before));
		free(before);
	}
	pf_dd_free(dd);

	/* old format: the top takes PF_TOP_GUID, unless a snapshot has it */
	check_int(parse_str(DOC(DP ST(IMG(GA, "a") IMG(GB, "b"))
				SN(GB, SHOT(GA, GN) SHOT(GB, GA))), &dd, &why),
		  ==, 0);
	if (dd) {
		check_int(pf_dd_switch(dd, GA, "n", &old), ==, 0);
		check_str(old, "b");
		free(old);
		check_str(dd->top_guid, PF_TOP_GUID);
		check(pf_dd_find_shot(dd, GB) == NULL);
		check_str(chain_files(dd), "a n");
		check(round_trip(dd, NULL));
	}
	pf_dd_free(dd);
	check_int(parse_str(DOC(DP ST(IMG(GT, "a") IMG(GA, "b") IMG(GB, "c"))
				SN(GB, SHOT(GT, GN) SHOT(GA, GT)
				       SHOT(GB, GA))), &dd, &why), ==, 0);
	if (dd) {
		before = text_of(dd);
		check_int(pf_dd_switch(dd, GA, "n", &old), ==, -EINVAL);
		check_int(pf_dd_switch(dd, GT, "n", &old), ==, -EINVAL);
		check(unchanged(dd, before));
		free(before);
	}
	pf_dd_free(dd);

	/* a full descriptor: a switch keeps the count, so it still works */
	check_int(pf_dd_new(20971520, 2048, 16, 40960, "root.hds", &dd), ==, 0);
	if (!dd)
		return;
	for (i = 1, ret = 0; i < PF_MAX_DELTAS && !ret; i++) {
		pf_guid_new(g);
		if (i == 100)
			memcpy(mid, g, sizeof(mid));
		snprintf(file, sizeof(file), "root.hds.%zu", i);
		ret = pf_dd_add_snapshot(dd, g, file);
	}
	check_int(ret, ==, 0);
	check_int(dd->n_images, ==, PF_MAX_DELTAS);
	check_int(pf_dd_switch(dd, mid, "fresh", &old), ==, 0);
	check_str(old, "root.hds.252");
	free(old);
	check_int(dd->n_images, ==, PF_MAX_DELTAS);
	check(round_trip(dd, NULL));
	pf_dd_free(dd);
}

/* Read file @name of @dirfd into a malloc'ed buffer. */
static int read_file_at(int dirfd, const char *name, char **buf,
			size_t *len)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/self/fd/%d/%s", dirfd, name);
	return read_file(path, buf, len);
}

/* Split store: tmp + fsync, then rename + directory fsync. */
/* What ploop writes and we do not model survives every edit */

#define KEY	"a1b2c3d4e5f60718293a4b5c6d7e8f90"
#define X_HEAD(root_attrs) \
	"<?xml version=\"1.0\"?>\n" \
	"<Virtuozzo_disk_image" root_attrs ">\n" \
	"  <Disk_Parameters>\n" \
	"    <Disk_size>20971520</Disk_size>\n" \
	"    <Max_delta_size>41943040</Max_delta_size>\n" \
	"    <Cylinders>40960</Cylinders>\n" \
	"    <Heads>16</Heads>\n" \
	"    <Sectors>32</Sectors>\n" \
	"    <Padding>0</Padding>\n" \
	"    <Encryption>\n" \
	"      <KeyId>" KEY "</KeyId>\n" \
	"    </Encryption>\n" \
	"  </Disk_Parameters>\n" \
	"  <StorageData>\n" \
	"    <Storage>\n" \
	"      <Start>0</Start>\n" \
	"      <End>20971520</End>\n" \
	"      <Blocksize>2048</Blocksize>\n" \
	"      <Preallocated>1</Preallocated>\n"
#define X_IMG(g, f, extra) \
	"      <Image>\n" \
	"        <GUID>" g "</GUID>\n" \
	"        <Type>Compressed</Type>\n" \
	"        <File>" f "</File>\n" extra \
	"      </Image>\n"
#define X_NOTE	"        <Note kind=\"base\">kept with a</Note>\n"
#define X_MID \
	"    </Storage>\n" \
	"  </StorageData>\n" \
	"  <Snapshots>\n" \
	"    <TopGUID>" GT "</TopGUID>\n"
#define X_SHOT(g, p, extra) \
	"    <Shot>\n" \
	"      <GUID>" g "</GUID>\n" \
	"      <ParentGUID>" p "</ParentGUID>\n" extra \
	"    </Shot>\n"
#define X_DESC(s) "      <Description lang=\"en\">" s "</Description>\n"
#define X_TAIL \
	"  </Snapshots>\n" \
	"  <Vendor_data id=\"7\" flags=\"a&amp;b\">\n" \
	"    <Blob>x</Blob>\n" \
	"  </Vendor_data>\n" \
	"</Virtuozzo_disk_image>\n"

/* base a (GA, with a note) <- b (GB) <- top t, shots described */
static const char extras[] =
	X_HEAD(" Version=\"1.0\"")
	X_IMG(GA, "root.hds", X_NOTE) X_IMG(GB, "b", "") X_IMG(GT, "t", "")
	X_MID
	X_SHOT(GA, GN, X_DESC("base")) X_SHOT(GB, GA, X_DESC("second"))
	X_SHOT(GT, GB, "")
	X_TAIL;

/* pf_dd_format(@dd) is @want byte for byte; on a difference, both go to
 * the TAP diagnostics. */
static bool formats_as(const struct pf_dd *dd, const char *want)
{
	char *text = text_of(dd);
	bool same = text && !strcmp(text, want);

	if (!same)
		tap_diag("got:\n%s\nwant:\n%s", text ? text : "(none)", want);
	free(text);
	return same;
}

static void test_keeps_unknown(void)
{
	struct pf_dd *dd = NULL;
	struct pf_why why;
	char *gone = NULL;

	check_int(parse_str(extras, &dd, &why), ==, 0);
	if (!dd)
		return;
	/* unedited: the very same bytes */
	check_msg(formats_as(dd, extras), "parsed descriptor formats as read");
	check(round_trip(dd, NULL));

	/* offline snapshot: t takes GC (given without braces, in upper
	 * case: written as ploop writes it), a new top "n" follows it */
	check_int(pf_dd_add_snapshot(dd, "2C3D4E5F-6071-4283-94A5-B6C7D8E9F0A1",
				     "n"), ==, 0);
	check_msg(formats_as(dd,
		X_HEAD(" Version=\"1.0\"")
		X_IMG(GA, "root.hds", X_NOTE) X_IMG(GB, "b", "")
		X_IMG(GC, "t", "") X_IMG(GT, "n", "")
		X_MID
		X_SHOT(GA, GN, X_DESC("base")) X_SHOT(GB, GA, X_DESC("second"))
		X_SHOT(GC, GB, "") X_SHOT(GT, GC, "")
		X_TAIL), "add_snapshot keeps the unknown parts");

	/* a delete in progress: the mark goes after ParentGUID, the
	 * description stays; cleared, it goes again */
	check_int(pf_dd_set_temporary(dd, GB, true), ==, 0);
	check_msg(formats_as(dd,
		X_HEAD(" Version=\"1.0\"")
		X_IMG(GA, "root.hds", X_NOTE) X_IMG(GB, "b", "")
		X_IMG(GC, "t", "") X_IMG(GT, "n", "")
		X_MID
		X_SHOT(GA, GN, X_DESC("base"))
		X_SHOT(GB, GA, "      <Temporary/>\n" X_DESC("second"))
		X_SHOT(GC, GB, "") X_SHOT(GT, GC, "")
		X_TAIL), "set_temporary on keeps the unknown parts");
	check_int(pf_dd_set_temporary(dd, GB, false), ==, 0);

	/* merged down into a's file: b's image and shot go, with the
	 * description inside; a's note stays with a */
	check_int(pf_dd_delete_snapshot(dd, GB, false, &gone), ==, 0);
	check_str(gone, "b");
	free(gone);
	check_msg(formats_as(dd,
		X_HEAD(" Version=\"1.0\"")
		X_IMG(GA, "root.hds", X_NOTE) X_IMG(GC, "t", "")
		X_IMG(GT, "n", "")
		X_MID
		X_SHOT(GA, GN, X_DESC("base")) X_SHOT(GC, GA, "")
		X_SHOT(GT, GC, "")
		X_TAIL), "delete_snapshot keeps the unknown parts");

	/* a renamed file, in place */
	check_int(pf_dd_set_file(dd, GA_BARE, "base.hds"), ==, 0);
	check_msg(formats_as(dd,
		X_HEAD(" Version=\"1.0\"")
		X_IMG(GA, "base.hds", X_NOTE) X_IMG(GC, "t", "")
		X_IMG(GT, "n", "")
		X_MID
		X_SHOT(GA, GN, X_DESC("base")) X_SHOT(GC, GA, "")
		X_SHOT(GT, GC, "")
		X_TAIL), "set_file keeps the unknown parts");

	/* back to a: the old top goes, the new one comes last */
	check_int(pf_dd_switch(dd, GA_BARE, "s", &gone), ==, 0);
	check_str(gone, "n");
	free(gone);
	check_msg(formats_as(dd,
		X_HEAD(" Version=\"1.0\"")
		X_IMG(GA, "base.hds", X_NOTE) X_IMG(GC, "t", "")
		X_IMG(GT, "s", "")
		X_MID
		X_SHOT(GA, GN, X_DESC("base")) X_SHOT(GC, GA, "")
		X_SHOT(GT, GA, "")
		X_TAIL), "switch keeps the unknown parts");
	check(round_trip(dd, NULL));

	/* a's image and shot are deleted, the top takes a's file: the note
	 * and the description inside a's elements go with them */
	check_int(pf_dd_delete_snapshot(dd, GC, true, &gone), ==, 0);
	check_str(gone, "t");
	free(gone);
	check_int(pf_dd_delete_snapshot(dd, GA, true, &gone), ==, 0);
	check_str(gone, "s");
	free(gone);
	check_msg(formats_as(dd,
		X_HEAD(" Version=\"1.0\"")
		X_IMG(GT, "base.hds", "")
		X_MID
		X_SHOT(GT, GN, "")
		X_TAIL), "a deleted image and shot take what they held");
	check(round_trip(dd, NULL));
	pf_dd_free(dd);
}

static void test_store_split(void)
{
	char tmpl[] = "/tmp/test_descriptor.XXXXXX";
	struct pf_dd *dd = NULL, *back = NULL;
	bool committed = false;
	char *want = NULL, *got = NULL;
	struct pf_why why;
	struct stat st;
	size_t len = 0;
	int dirfd;

	if (!mkdtemp(tmpl)) {
		check_msg(0, "mkdtemp: %s", strerror(errno));
		return;
	}
	dirfd = open(tmpl, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	check(dirfd >= 0);
	if (dirfd < 0)
		return;
	check_int(pf_dd_new(20971520, 2048, 16, 40960, PF_BASE_NAME, &dd), ==,
		  0);
	if (!dd)
		goto out_dir;
	check_int(pf_dd_replace(dirfd, dd, &committed), ==, 0);
	/* the tmp takes the mode of the descriptor it is to replace */
	check(fchmodat(dirfd, PF_DD_NAME, 0640, 0) == 0);

	/* prepared, not committed: the old descriptor is what loads */
	check_int(pf_dd_add_snapshot(dd, GA, "root.hds.1"), ==, 0);
	check_int(pf_dd_store_tmp(dirfd, dd), ==, 0);
	check(fstatat(dirfd, PF_DD_TMP_NAME, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	      S_ISREG(st.st_mode) && (st.st_mode & 0777) == 0640);
	want = text_of(dd);
	check_int(read_file_at(dirfd, PF_DD_TMP_NAME, &got, &len), ==, 0);
	check(want && got && len == strlen(want) && !memcmp(got, want, len));
	free(got);
	got = NULL;
	check_int(pf_dd_load(dirfd, &back, &why), ==, 0);
	check(back && back->n_images == 1);
	pf_dd_free(back);
	back = NULL;
	/* a second prepare replaces the first */
	check_int(pf_dd_store_tmp(dirfd, dd), ==, 0);
	check_int(pf_dd_commit_tmp(dirfd, &committed), ==, 0);
	check(committed);
	check(faccessat(dirfd, PF_DD_TMP_NAME, F_OK, AT_SYMLINK_NOFOLLOW) < 0 &&
	      errno == ENOENT);
	check_int(pf_dd_load(dirfd, &back, &why), ==, 0);
	check(back && pf_dd_equal(dd, back));
	pf_dd_free(back);
	back = NULL;

	/* nothing to commit: -ENOENT and no change */
	check_int(pf_dd_commit_tmp(dirfd, &committed), ==, -ENOENT);
	check(!committed);
	check_int(read_file_at(dirfd, PF_DD_NAME, &got, &len), ==, 0);
	check(want && got && len == strlen(want) && !memcmp(got, want, len));
	free(got);
	got = NULL;

	/* dropped: the tmp goes, the descriptor stays */
	check_int(pf_dd_add_snapshot(dd, GB, "root.hds.2"), ==, 0);
	check_int(pf_dd_store_tmp(dirfd, dd), ==, 0);
	pf_dd_drop_tmp(dirfd);
	check(faccessat(dirfd, PF_DD_TMP_NAME, F_OK, AT_SYMLINK_NOFOLLOW) < 0 &&
	      errno == ENOENT);
	pf_dd_drop_tmp(dirfd);	/* nothing there: harmless */
	check_int(pf_dd_load(dirfd, &back, &why), ==, 0);
	check(back && back->n_images == 2);
	pf_dd_free(back);
	back = NULL;

	/* a tmp that cannot be written: an error, nothing changes, and
	 * what is in the way is not ours to remove */
	check(symlinkat("elsewhere.xml", dirfd, PF_DD_TMP_NAME) == 0);
	check(pf_dd_store_tmp(dirfd, dd) < 0);
	check(faccessat(dirfd, "elsewhere.xml", F_OK, 0) < 0);
	check(fstatat(dirfd, PF_DD_TMP_NAME, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	      S_ISLNK(st.st_mode));
	check(unlinkat(dirfd, PF_DD_TMP_NAME, 0) == 0);
	/* a rename that fails removes the tmp and leaves the old
	 * descriptor (here a directory in its way) */
	check_int(pf_dd_store_tmp(dirfd, dd), ==, 0);
	check(unlinkat(dirfd, PF_DD_NAME, 0) == 0);
	check(mkdirat(dirfd, PF_DD_NAME, 0700) == 0);
	check(pf_dd_commit_tmp(dirfd, &committed) < 0);
	check(!committed);
	check(faccessat(dirfd, PF_DD_TMP_NAME, F_OK, AT_SYMLINK_NOFOLLOW) < 0 &&
	      errno == ENOENT);
	check(fstatat(dirfd, PF_DD_NAME, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	      S_ISDIR(st.st_mode));
	check(pf_dd_replace(dirfd, dd, &committed) < 0);
	check(!committed);
	check(faccessat(dirfd, PF_DD_TMP_NAME, F_OK, AT_SYMLINK_NOFOLLOW) < 0 &&
	      errno == ENOENT);
	check(unlinkat(dirfd, PF_DD_NAME, AT_REMOVEDIR) == 0);
	check_int(pf_dd_replace(dirfd, dd, &committed), ==, 0);
	check_int(pf_dd_load(dirfd, &back, &why), ==, 0);
	check(back && pf_dd_equal(dd, back));
	pf_dd_free(back);
	check(unlinkat(dirfd, PF_DD_NAME, 0) == 0);

out_dir:
	free(want);
	pf_dd_free(dd);
	close(dirfd);
	check(rmdir(tmpl) == 0);
}

/* Whether @name exists in @dirfd (not following a symbolic link). */
static bool exists_at(int dirfd, const char *name)
{
	return faccessat(dirfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
}

/* Load the descriptor of @dirfd and open its top delta. */
static int load_top(int dirfd, struct pf_dd **dd, struct pf_delta **top)
{
	struct pf_why why;
	size_t *chain = NULL, n = 0;
	int ret;

	memset(&why, 0, sizeof(why));
	*top = NULL;
	ret = pf_dd_load(dirfd, dd, &why);
	if (!ret)
		ret = pf_dd_chain(*dd, &chain, &n, &why);
	if (!ret)
		ret = pf_delta_open(dirfd, (*dd)->images[chain[n - 1]].file, 0, NULL,
				    top, &why);
	if (ret)
		tap_diag("load_top: %s", why.msg);
	free(chain);
	return ret;
}

/* pf_image_switch on real files: W6 order, failure paths, refusals. */
static void test_image_switch(void)
{
	char tmpl[] = "/tmp/test_descriptor.XXXXXX";
	char snap1[PF_GUID_LEN + 1], snap2[PF_GUID_LEN + 1];
	char *old_top = NULL, *new_file = NULL, *before = NULL;
	struct pf_delta *top = NULL, *d = NULL;
	struct pf_dd *dd = NULL;
	struct pf_why why;
	struct stat st;
	int dirfd;

	if (!mkdtemp(tmpl)) {
		check_msg(0, "mkdtemp: %s", strerror(errno));
		return;
	}
	rmdir(tmpl);
	tu_make_image(tmpl, 64 << 20, 1 << 20);
	tu_snapshot(tmpl);
	tu_snapshot(tmpl);
	dirfd = open(tmpl, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	check(dirfd >= 0);
	if (dirfd < 0)
		return;
	if (load_top(dirfd, &dd, &top))
		goto out;
	/* root.hds (snap1) <- snap2 <- top */
	memcpy(snap1, dd->images[0].guid, sizeof(snap1));
	memcpy(snap2, dd->images[1].guid, sizeof(snap2));
	old_top = strdup(dd->images[2].file);

	/* refusals: no file appears, nothing changes */
	before = text_of(dd);
	memset(&why, 0, sizeof(why));
	check_int(pf_image_switch(dirfd, dd, &top->hdr, GD, &new_file, &why),
		  ==, -ENOENT);
	check(strstr(why.msg, "no snapshot " GD) != NULL);
	memset(&why, 0, sizeof(why));
	check_int(pf_image_switch(dirfd, dd, &top->hdr, GT, &new_file, &why),
		  ==, -EINVAL);
	check(strstr(why.msg, "is the current top") != NULL);
	memset(&why, 0, sizeof(why));
	check_int(pf_image_switch(dirfd, dd, &top->hdr, "{x}", &new_file,
				  &why), ==, -EINVAL);
	check(why.msg[0] != '\0');
	check_int(pf_dd_set_temporary(dd, snap1, true), ==, 0);
	memset(&why, 0, sizeof(why));
	check_int(pf_image_switch(dirfd, dd, &top->hdr, snap1, &new_file,
				  &why), ==, -EINVAL);
	check(strstr(why.msg, "being deleted") != NULL);
	check_int(pf_dd_set_temporary(dd, snap1, false), ==, 0);
	check(new_file == NULL);
	check(unchanged(dd, before));
	free(before);
	pf_dd_free(dd);
	dd = NULL;

	/* the descriptor cannot be written: the new file is removed, the
	 * old top and descriptor stay */
	check(pf_dd_load(dirfd, &dd, &why) == 0);
	check(mkdirat(dirfd, PF_DD_TMP_NAME, 0700) == 0);
	memset(&why, 0, sizeof(why));
	check(pf_image_switch(dirfd, dd, &top->hdr, snap1, &new_file, &why) <
	      0);
	check(strstr(why.msg, "cannot update") != NULL);
	check(new_file == NULL);
	check(unlinkat(dirfd, PF_DD_TMP_NAME, AT_REMOVEDIR) == 0);
	check(exists_at(dirfd, old_top));
	pf_dd_free(dd);
	dd = NULL;
	check_int(pf_dd_load(dirfd, &dd, &why), ==, 0);
	check(dd && dd->n_images == 3);
	check(dd && !strcmp(dd->images[2].file, old_top));
	pf_dd_free(dd);
	dd = NULL;
	{
		/* only the three deltas and the descriptor are there */
		int n = 0;
		DIR *dir = opendir(tmpl);
		struct dirent *de;

		while (dir && (de = readdir(dir)))
			n += de->d_name[0] != '.';
		if (dir)
			closedir(dir);
		check_int(n, ==, 4);
	}

	/* switch back to snap1: the new top is an empty delta with the
	 * old top's geometry, the old top's file is gone */
	check(pf_dd_load(dirfd, &dd, &why) == 0);
	memset(&why, 0, sizeof(why));
	check_int(pf_image_switch(dirfd, dd, &top->hdr, snap1, &new_file,
				  &why), ==, 0);
	check_msg(new_file && !strncmp(new_file, "root.hds.{", 10) &&
		  strlen(new_file) == 9 + PF_GUID_LEN,
		  "new file %s", new_file ? new_file : "(null)");
	check(!exists_at(dirfd, old_top));
	check(!exists_at(dirfd, PF_DD_TMP_NAME));
	/* @dd is what was stored */
	before = text_of(dd);
	pf_dd_free(dd);
	dd = NULL;
	pf_delta_close(top);
	top = NULL;
	check_int(load_top(dirfd, &dd, &top), ==, 0);
	check(dd && unchanged(dd, before));
	free(before);
	if (dd && top && new_file) {
		char want[PF_GUID_LEN * 2 + 32];

		snprintf(want, sizeof(want), "root.hds %s", new_file);
		check_str(chain_files(dd), want);
		check_str(pf_dd_parent(dd, PF_TOP_GUID), snap1);
		/* snap2 stays, on a side branch */
		check_str(pf_dd_parent(dd, snap2), snap1);
		check_int(dd->n_images, ==, 3);
		check_int(top->hdr.in_use, ==, PF_INUSE_CLOSED);
		check_int(top->hdr.flags, ==, PF_FLAG_EMPTY);
		check_u64(top->hdr.size_sectors, ==, (64 << 20) >> 9);
		check_int(top->hdr.cluster_sectors, ==, 2048);
		check_u64(pf_delta_mapped_count(top), ==, 0);
		check(fstatat(dirfd, new_file, &st, 0) == 0 &&
		      st.st_size == 1 << 20);
		/* the side branch's delta is untouched and still opens */
		memset(&why, 0, sizeof(why));
		check_int(pf_delta_open(dirfd,
					pf_dd_find_image(dd, snap2)->file, 0, NULL,
					&d, &why), ==, 0);
		pf_delta_close(d);
	}
out:
	free(new_file);
	free(old_top);
	pf_delta_close(top);
	pf_dd_free(dd);
	if (dirfd >= 0) {
		DIR *dir = opendir(tmpl);
		struct dirent *de;

		while (dir && (de = readdir(dir)))
			if (de->d_name[0] != '.')
				unlinkat(dirfd, de->d_name, 0);
		if (dir)
			closedir(dir);
		close(dirfd);
	}
	check(rmdir(tmpl) == 0);
}

/*
 * The policy for a directory fsync that fails after the rename
 * (descriptor.h): the call fails with *committed set, the new descriptor
 * is the one in place, no tmp file is left, and a caller that created a
 * file for the new descriptor keeps it.
 */
static void test_replace_not_durable(void)
{
	char tmpl[] = "/tmp/test_descriptor.XXXXXX";
	struct pf_dd *dd = NULL, *back = NULL;
	struct pf_why why = { "" };
	struct pf_header h;
	bool committed = false;
	int dirfd;

	if (!mkdtemp(tmpl)) {
		check_msg(0, "mkdtemp: %s", strerror(errno));
		return;
	}
	dirfd = open(tmpl, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	check(dirfd >= 0);
	if (dirfd < 0)
		return;
	check_int(pf_dd_new(20971520, 2048, 16, 40960, PF_BASE_NAME, &dd), ==,
		  0);
	if (!dd)
		goto out;
	check_int(pf_dd_replace(dirfd, dd, &committed), ==, 0);
	check(committed);

	check_int(pf_dd_add_snapshot(dd, GA, "root.hds.1"), ==, 0);
	wrap_fsync_dir_fail = 1;
	wrap_fsync_dir_failed = 0;
	check_int(pf_dd_replace(dirfd, dd, &committed), ==, -EIO);
	check_int(wrap_fsync_dir_failed, ==, 1);
	check(committed);
	check(!exists_at(dirfd, PF_DD_TMP_NAME));
	check_int(pf_dd_load(dirfd, &back, &why), ==, 0);
	check(back && pf_dd_equal(dd, back));	/* the new one is in place */
	pf_dd_free(back);
	back = NULL;

	/* the same through the two halves */
	check_int(pf_dd_add_snapshot(dd, GB, "root.hds.2"), ==, 0);
	check_int(pf_dd_store_tmp(dirfd, dd), ==, 0);
	wrap_fsync_dir_fail = 1;
	check_int(pf_dd_commit_tmp(dirfd, &committed), ==, -EIO);
	check(committed);
	check(!exists_at(dirfd, PF_DD_TMP_NAME));
	check_int(pf_dd_load(dirfd, &back, &why), ==, 0);
	check(back && back->n_images == 3);
	pf_dd_free(back);
	back = NULL;
	check(unlinkat(dirfd, PF_DD_NAME, 0) == 0);

	/* image creation: the delta's own directory sync is the first,
	 * the descriptor's the second; root.hds stays, named by the
	 * descriptor that is in place */
	check_int(pf_header_init(&h, 64 << 20, 1 << 20, &why), ==, 0);
	wrap_fsync_dir_fail = 2;
	memset(&why, 0, sizeof(why));
	check_int(pf_image_create(dirfd, &h, &why), ==, -EIO);
	check_int(wrap_fsync_dir_failed, ==, 3);
	check_msg(strstr(why.msg, PF_DD_NAME) != NULL, "why: %s", why.msg);
	check(exists_at(dirfd, PF_BASE_NAME));
	check_int(pf_dd_load(dirfd, &back, &why), ==, 0);
	check(back && back->n_images == 1 &&
	      !strcmp(back->images[0].file, PF_BASE_NAME));
	pf_dd_free(back);
	wrap_fsync_dir_fail = 0;
	check(unlinkat(dirfd, PF_DD_NAME, 0) == 0);
	check(unlinkat(dirfd, PF_BASE_NAME, 0) == 0);
out:
	pf_dd_free(dd);
	close(dirfd);
	check(rmdir(tmpl) == 0);
}

/* A file name that is "<stem>.{uuid}" with a valid GUID. */
static bool stem_plus_guid(const char *name, const char *stem)
{
	size_t n = strlen(stem);

	return name && !strncmp(name, stem, n) && name[n] == '.' &&
	       strlen(name + n + 1) == PF_GUID_LEN &&
	       pf_guid_valid(name + n + 1);
}

/* Names of new tops: ploop's "<base>.{uuid}", from the base's stem. */
static void test_top_name(void)
{
	static const struct {
		const char *base, *stem;
	} cases[] = {
		{ "root.hds", "root.hds" },
		{ "root.hds." GA, "root.hds" },
		{ "root.hds." GA "." GB, "root.hds" },
		{ "my.disk", "my.disk" },
		{ "a.{not-a-guid}", "a.{not-a-guid}" },
		{ "x" GA, "x" GA },	/* no dot: not a suffix */
	};
	struct pf_why why = { "" };
	char *name = NULL, longb[250];
	size_t i;

	for (i = 0; i < PF_ARRAY_SIZE(cases); i++) {
		check_int(pf_image_top_name(cases[i].base, &name, &why), ==, 0);
		check_msg(stem_plus_guid(name, cases[i].stem), "%s -> %s",
			  cases[i].base, name ? name : "(null)");
		free(name);
		name = NULL;
	}
	memset(longb, 'a', sizeof(longb) - 1);
	longb[sizeof(longb) - 1] = 0;
	check_int(pf_image_top_name(longb, &name, &why), ==, -EINVAL);
	check(name == NULL);
	check(strstr(why.msg, "NAME_MAX") != NULL);
}

/* Number of entries in the directory @dir (but . and ..). */
static int dir_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;

	while (d && (de = readdir(d)))
		n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
	if (d)
		closedir(d);
	return n;
}

/* Offline snapshot through the shared preparation: the GUID rules (the
 * daemon's are the same code), refusals that leave no file behind. */
static void test_image_snapshot(void)
{
	char tmpl[] = "/tmp/test_descriptor.XXXXXX";
	static const char *const bad[] = { "{x}", GT, GN, "not-a-guid" };
	struct pf_snap_prep p = { "", NULL };
	struct pf_delta *top = NULL;
	struct pf_dd *dd = NULL;
	struct pf_why why = { "" };
	char first[PF_GUID_LEN + 1] = "", up[PF_GUID_LEN + 1];
	size_t i;
	int dirfd, ret;

	if (!mkdtemp(tmpl)) {
		check_msg(0, "mkdtemp: %s", strerror(errno));
		return;
	}
	rmdir(tmpl);
	tu_make_image(tmpl, 64 << 20, 1 << 20);
	dirfd = open(tmpl, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0 || load_top(dirfd, &dd, &top)) {
		check(0);
		return;
	}
	for (i = 0; i < PF_ARRAY_SIZE(bad); i++) {
		memset(&why, 0, sizeof(why));
		check_int(pf_image_snapshot(dirfd, dd, &top->hdr, bad[i], &p,
					    &why), ==, -EINVAL);
		check_msg(strstr(why.msg, "not a valid snapshot GUID"), "%s: %s",
			  bad[i], why.msg);
	}
	check_int(dir_entries(tmpl), ==, 2);
	check_int(pf_image_snapshot(dirfd, dd, &top->hdr, GA, &p, &why), ==, 0);
	check_str(p.guid, GA);
	check_msg(stem_plus_guid(p.file, PF_BASE_NAME), "new top %s", p.file);
	memcpy(first, p.guid, sizeof(first));
	free(p.file);
	pf_dd_free(dd);
	dd = NULL;
	pf_delta_close(top);
	top = NULL;
	check_int(load_top(dirfd, &dd, &top), ==, 0);
	/* in use, in either case: refused, nothing created */
	for (i = 0; i <= PF_GUID_LEN; i++)
		up[i] = (char)(first[i] >= 'a' && first[i] <= 'f' ?
				       first[i] - 'a' + 'A' :
				       first[i]);
	memset(&why, 0, sizeof(why));
	check_int(pf_image_snapshot(dirfd, dd, &top->hdr, up, &p, &why), ==,
		  -EEXIST);
	check(strstr(why.msg, "already in use") != NULL);
	check_int(dir_entries(tmpl), ==, 3);
	/* fresh GUIDs, and the stem again (not root.hds.{A}.{B}) */
	check_int(pf_image_snapshot(dirfd, dd, &top->hdr, NULL, &p, &why), ==, 0);
	check(pf_guid_valid(p.guid) && strcmp(p.guid, first));
	check_msg(stem_plus_guid(p.file, PF_BASE_NAME), "new top %s", p.file);
	free(p.file);
	pf_dd_free(dd);
	dd = NULL;
	pf_delta_close(top);
	top = NULL;

	/* PF_MAX_DELTAS images: refused before any file is made */
	check_int(load_top(dirfd, &dd, &top), ==, 0);
	for (i = dd->n_images, ret = 0; i < PF_MAX_DELTAS && !ret; i++) {
		char g[PF_GUID_LEN + 1], f[32];

		pf_guid_new(g);
		snprintf(f, sizeof(f), "f%zu", i);
		ret = pf_dd_add_snapshot(dd, g, f);
	}
	check_int(ret, ==, 0);
	memset(&why, 0, sizeof(why));
	check_int(pf_image_snapshot_prepare(dirfd, dd, &top->hdr, NULL,
					    PF_INUSE_OPEN, NULL, &p, &why),
		  ==, -EMLINK);
	check(strstr(why.msg, "too many deltas") != NULL);
	check_int(dir_entries(tmpl), ==, 4);
	pf_dd_free(dd);
	pf_delta_close(top);
	tu_remove_dir(tmpl);
	close(dirfd);
}

/* The shared chain open: every delta, checked, problems named by file. */
static void test_open_chain(void)
{
	char tmpl[] = "/tmp/test_descriptor.XXXXXX";
	struct pf_delta **v = NULL;
	struct pf_dd *dd = NULL;
	struct pf_why why = { "" };
	size_t *chain = NULL, n = 0;
	char path[600];
	uint8_t bad[4] = { 0xff, 0xff, 0xff, 0x7f };
	int dirfd, fd;

	if (!mkdtemp(tmpl)) {
		check_msg(0, "mkdtemp: %s", strerror(errno));
		return;
	}
	rmdir(tmpl);
	tu_make_image(tmpl, 64 << 20, 1 << 20);
	tu_snapshot(tmpl);
	dirfd = open(tmpl, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0 || pf_dd_load(dirfd, &dd, &why) ||
	    pf_dd_chain(dd, &chain, &n, &why)) {
		check(0);
		return;
	}
	check_int(pf_image_open_chain(dirfd, dd, chain, n, PF_DELTA_WRITE,
				      true, NULL, &v, &why), ==, 0);
	check(v && v[0] && v[1] && !v[0]->writable && v[1]->writable);
	pf_image_close_chain(v, n);
	v = NULL;
	/* a BAT entry of the base far beyond its file */
	snprintf(path, sizeof(path), "%s/" PF_BASE_NAME, tmpl);
	fd = open(path, O_WRONLY);
	check(fd >= 0 && pwrite(fd, bad, 4, PF_HEADER_SIZE) == 4);
	if (fd >= 0)
		close(fd);
	check_int(pf_image_open_chain(dirfd, dd, chain, n, 0, true, NULL, &v,
				      &why), ==, -EUCLEAN);
	check(v == NULL);
	check_msg(!strncmp(why.msg, PF_BASE_NAME ": ", 10), "why: %s", why.msg);
	/* unchecked, it opens */
	check_int(pf_image_open_chain(dirfd, dd, chain, n, 0, false, NULL, &v,
				      &why), ==, 0);
	pf_image_close_chain(v, n);
	v = NULL;
	/* a missing delta: named, with the open's error */
	snprintf(path, sizeof(path), "%s/%s", tmpl, dd->images[chain[1]].file);
	check(unlink(path) == 0);
	check_int(pf_image_open_chain(dirfd, dd, chain, n, 0, false, NULL, &v,
				      &why), ==, -ENOENT);
	check_msg(!strncmp(why.msg, dd->images[chain[1]].file,
			   strlen(dd->images[chain[1]].file)) &&
			  strstr(why.msg, "cannot open"),
		  "why: %s", why.msg);
	/* a FIFO in its place: refused at once, not waited for */
	check(mkfifo(path, 0600) == 0);
	check_int(pf_image_open_chain(dirfd, dd, chain, n, 0, false, NULL, &v,
				      &why), ==, -EINVAL);
	check_msg(strstr(why.msg, "not a regular file") != NULL, "why: %s",
		  why.msg);
	free(chain);
	pf_dd_free(dd);
	tu_remove_dir(tmpl);
	close(dirfd);
}

int main(void)
{
	test_example_2_2();
	test_example_2_3();
	test_lenient_forms();
	test_hostile();
	test_parse_limits();
	test_guids_and_names();
	test_guid_canon();
	test_snapshots();
	test_store_load();
	test_store_split();
	test_set_temporary();
	test_children_parent();
	test_delete_snapshot();
	test_switch();
	test_keeps_unknown();
	test_image_switch();
	test_replace_not_durable();
	test_top_name();
	test_image_snapshot();
	test_open_chain();
	test_deep();
	test_corpus();
	return tap_done();
}
