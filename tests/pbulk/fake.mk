# A package's build for the tests' pkgsrc tree, in bmake: the targets pbulk's build script runs
# (checksum, configure, all, install, package, clean), each a few lines of shell. A package's
# Makefile sets PKGNAME, PKG_DEPENDS (the PKGNAMEs it depends on), NEEDS (what must be installed
# when it configures) and may set BROKEN_CONFIGURE, then includes this file. mk.conf, at the top
# of the tree as in pkgsrc, sets PACKAGES and PREFIX.

.include "${.CURDIR}/../../mk.conf"

PKGBASE=	${PKGNAME:C/-[^-]*$//}
WRKDIR=		${.CURDIR}/work
PKGFILE=	${PACKAGES}/All/${PKGNAME}.tgz
# What configure finds in the prefix: only what the package depends on may be there.
NOT_MINE=	${:!cd ${PREFIX}/share 2>/dev/null && ls || true!:N${PKGBASE}}

checksum:
	@echo "=> Checksum OK for ${PKGNAME}"

configure:
	@mkdir -p ${WRKDIR}
	@echo "=> Configuring for ${PKGNAME}"
.for dep in ${NEEDS}
	@test -f ${PREFIX}/share/${dep}/${dep}.txt || { echo "configure: error: ${dep} is not installed" >&2; exit 1; }
.endfor
.for found in ${NOT_MINE:O}
	@case " ${NEEDS} " in *" ${found} "*) ;; *) echo "configure: error: found ${found}, which ${PKGNAME} does not depend on" >&2; exit 1;; esac
.endfor
.if defined(BROKEN_CONFIGURE)
	@echo "checking for libfoo... no"
	@echo "configure: error: libfoo not found" >&2
	@false
.endif

all:
	@echo "=> Building ${PKGNAME}"
	@echo "${PKGNAME} ${PYTHON_VERSION_REQD}" > ${WRKDIR}/${PKGBASE}.txt

install:
	@mkdir -p ${PREFIX}/share/${PKGBASE}
	@cp ${WRKDIR}/${PKGBASE}.txt ${PREFIX}/share/${PKGBASE}/

package:
	@rm -rf ${WRKDIR}/pkg && mkdir -p ${WRKDIR}/pkg/share/${PKGBASE} ${PACKAGES}/All
	@cp ${WRKDIR}/${PKGBASE}.txt ${WRKDIR}/pkg/share/${PKGBASE}/
	@{ echo "@name ${PKGNAME}"; echo "@cwd ${PREFIX}"; \
	   for d in ${PKG_DEPENDS}; do echo "@pkgdep $$d"; done; \
	   echo "share/${PKGBASE}/${PKGBASE}.txt"; } > ${WRKDIR}/pkg/+CONTENTS
	@echo "${PREFIX}" > ${WRKDIR}/pkg/+PREFIX
	@echo "test package ${PKGNAME}" > ${WRKDIR}/pkg/+COMMENT
	@echo "${.CURDIR:S,^${PKGSRCDIR}/,,}/Makefile `cksum < ${.CURDIR}/Makefile | tr ' ' _`" > ${WRKDIR}/pkg/+BUILD_VERSION
	@cd ${WRKDIR}/pkg && tar -czf ${PKGFILE}.tmp +CONTENTS +COMMENT +PREFIX +BUILD_VERSION share
	@mv ${PKGFILE}.tmp ${PKGFILE}
	@echo "=> Created ${PKGFILE}"

clean:
	@rm -rf ${WRKDIR}
