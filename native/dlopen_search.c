/* dlopen_search.c: dlopen of a bare library name as the original caller would do it.
 *
 * glibc searches a bare library name in the calling object's RPATH/RUNPATH, and finds the
 * caller from the return address. From inside native mode's dlopen wrapper the caller
 * would be this module, so for a bare name the wrapper calls nc_dlopen_as, which first
 * asks whether the library is already loaded (RTLD_NOLOAD), then searches the original
 * caller's own directories (dlinfo RTLD_DI_SERINFO on the caller's link map) and opens
 * the file found by its path; the system directories and ld.so.cache are left to dlopen
 * itself.
 */
#include "native_mode.h"

#if NC_SUPPORTED

#include <dlfcn.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Our own malloc calls here are not sampled: this module's slots are never patched. */
void *nc_dlopen_as(const char *file, int mode, const void *caller) {
    void *h = dlopen(file, mode | RTLD_NOLOAD);       /* already loaded: no search at all */
    if (h != NULL) return h;
    Dl_info info;
    struct link_map *lm = NULL;
    if (dladdr1(caller, &info, (void **)&lm, RTLD_DL_LINKMAP) != 0 && lm != NULL) {
        Dl_serinfo size;
        if (dlinfo(lm, RTLD_DI_SERINFOSIZE, &size) == 0 && size.dls_size > 0) {
            Dl_serinfo *si = malloc(size.dls_size);
            if (si != NULL) {
                si->dls_size = size.dls_size;
                si->dls_cnt = size.dls_cnt;
                if (dlinfo(lm, RTLD_DI_SERINFO, si) == 0) {
                    size_t flen = strlen(file);
                    for (unsigned int i = 0; i < si->dls_cnt && h == NULL; i++) {
                        const Dl_serpath *sp = &si->dls_serpath[i];
                        if (sp->dls_flags & LA_SER_DEFAULT) continue;   /* left to dlopen */
                        size_t dlen = strlen(sp->dls_name);
                        char *path = malloc(dlen + flen + 2);
                        if (path == NULL) continue;
                        memcpy(path, sp->dls_name, dlen);
                        path[dlen] = '/';
                        memcpy(path + dlen + 1, file, flen + 1);
                        if (access(path, F_OK) == 0) h = dlopen(path, mode);
                        free(path);
                    }
                }
                free(si);
            }
        }
    }
    return h != NULL ? h : dlopen(file, mode);
}

#endif  /* NC_SUPPORTED */
