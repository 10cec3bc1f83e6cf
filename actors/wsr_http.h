//  wsr_http — (placeholder)
#ifndef WSR_HTTP_H_INCLUDED
#define WSR_HTTP_H_INCLUDED
#endif
